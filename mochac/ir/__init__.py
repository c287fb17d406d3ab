"""The IR: a networkx graph of layer and blob nodes with shapes and schedules."""

from mochac.ir.graph import BlobInfo, LayerInfo, NetIR, build_ir

__all__ = ["BlobInfo", "LayerInfo", "NetIR", "build_ir"]

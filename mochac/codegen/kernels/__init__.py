"""Lowering functions of layer families, one module each.

Every module here registers its layers with
``mochac.codegen.lowering.register_lowering``; lowering imports them all on
first use, so a new family needs no edit elsewhere.
"""

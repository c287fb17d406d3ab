"""The deploy net of the MNIST tutorial, for ``mochac compile``.

mochac compile examples/mnist/deploy_net.py -o build
python -c "import sys; sys.path.insert(0, 'build'); from mnist_deploy import net"
"""

import numpy as np
from lenet import common_layers

from mochac import CPUBackend, MemoryDataLayer, Net, SoftmaxLayer

image = np.zeros((1, 1, 28, 28), dtype=np.float32)
data_layer = MemoryDataLayer(name="data", tops=["data"], batch_size=1, data=[image])
softmax = SoftmaxLayer(name="prob", bottoms=["ip2"], tops=["prob"])
net = Net(
    "MNIST-deploy",
    CPUBackend(threads=1, seed=0),
    [data_layer, *common_layers(), softmax],
)

if __name__ == "__main__":
    print(net)

"""The bottom layer: what every other layer shares and nothing here imports from above.

    device.py       host tensors onto the device without making the host wait
    normalize.py    the normalisation constants and their checks
    boxes.py        crop boxes: quantisation, pixels, RandomResizedCrop sampling
    distributed.py  the torchrun process group (rank, world size, device per rank)
"""

"""PyTorch references of the ResNet/VGG backbones in plain torch.nn (no torchvision), with
torchvision's module names, so their state_dict keys are torchvision's (tests/test_backbones.py)."""

import numpy as np
import torch

tnn = torch.nn


class TBasic(tnn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU()
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, planes, 1, stride, bias=False),
                                             tnn.BatchNorm2d(planes))

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        out = planes * 4
        self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(out)
        self.relu = tnn.ReLU()
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, out, 1, stride, bias=False),
                                             tnn.BatchNorm2d(out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TResNet(tnn.Module):
    """torchvision.models.ResNet's modules and forward; small_stem: 3x3/1 conv1, no max pool."""

    def __init__(self, block, layers, num_classes=1000, small_stem=False):
        super().__init__()
        self.small_stem = small_stem
        self.conv1 = (tnn.Conv2d(3, 64, 3, 1, 1, bias=False) if small_stem
                      else tnn.Conv2d(3, 64, 7, 2, 3, bias=False))
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU()
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, n in enumerate(layers):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, 64 * 2 ** i, 2 if i and not j else 1))
                cin = 64 * 2 ** i * block.expansion
            setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if not self.small_stem:
            x = self.maxpool(x)
        maps = {}
        for i in range(4):
            x = maps[f"layer{i + 1}"] = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1)), maps


class TVGG(tnn.Module):
    """torchvision.models.VGG with make_layers(cfg 'D', batch_norm)."""

    def __init__(self, batch_norm=False, num_classes=1000):
        super().__init__()
        layers, cin = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                  512, 512, 512, "M"):
            if v == "M":
                layers.append(tnn.MaxPool2d(2, 2))
            else:
                layers.append(tnn.Conv2d(cin, v, 3, padding=1))
                layers += [tnn.BatchNorm2d(v)] if batch_norm else []
                layers.append(tnn.ReLU(inplace=True))
                cin = v
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
        self.classifier = tnn.Sequential(
            tnn.Linear(512 * 7 * 7, 4096), tnn.ReLU(True), tnn.Dropout(),
            tnn.Linear(4096, 4096), tnn.ReLU(True), tnn.Dropout(), tnn.Linear(4096, num_classes))

    def forward(self, x):
        b5 = self.features[:-1](x)
        f = self.features[-1](b5)
        return self.classifier(torch.flatten(self.avgpool(f), 1)), {"block5": b5, "features": f}


def build(cls, *args, **kwargs):
    """cls(*args, **kwargs) built on the meta device then given uninitialised CPU storage (skips
    torch's default init, slow for VGG's 138 M weights): call ``randomise`` next."""
    with torch.device("meta"):
        net = cls(*args, **kwargs)
    return net.to_empty(device="cpu")


def randomise(net, seed=0):
    """He-scaled random weights, random BN affine params and running statistics (the last BN of
    each residual branch scaled by 0.3 so deep nets stay O(10-100)); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(net.named_parameters()) + list(net.named_buffers()):
            if name.endswith("num_batches_tracked"):
                p.zero_()
            elif p.ndim > 1:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("running_var"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("weight"):                     # BN scale
                last = name.endswith("bn3.weight") or (name.endswith("bn2.weight")
                                                       and isinstance(net.layer1[0], TBasic))
                p.copy_((torch.rand(p.shape, generator=g) * 0.5 + 0.75) * (0.3 if last else 1))
            else:                                             # biases, running_mean
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()

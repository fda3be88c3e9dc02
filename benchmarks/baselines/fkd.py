"""FKD's soft-label files (one per image) and their loader, written from its public code:

  writer    FKD_SLG/generate_soft_label.py (`generate_soft_labels`, `label_quantization`): per image
            num_crops RandomResizedCropWithCoords crops (+ flip), softmax of the teacher's output,
            label type marginal_smoothing_k5: per crop [argsort ids[:k], probabilities] stacked to a
            float32 numpy (N, 2, k); torch.save([coords.numpy() float32 (N, 4), flip.numpy() bool (N,),
            labels], <class>/<image stem>.tar).
  loader    utils_FKD.py `ImageFolder_FKD`: per sample, torch.load its label file, a torch.randperm
            over its crops, and for each of num_crops crops the replayed RandomResizedCrop_FKD
            (stored fractions x PIL size) + RandomHorizontalFlip_FKD + ToTensor + Normalize; returns
            lists of crops, targets and stored labels.
  loss      train_FKD.py: crops concatenated, Recover_soft_label(marginal_smoothing_k5) (the rest
            mass spread evenly over the C - 5 other classes), Soft_CrossEntropy (mean over rows).

Simplified: the writer labels a given tensor of crops (the original's crops come from its own
ImageFolder_FKD_GSL loader; `write_image_labels` takes them with their coords and flips); CPU only.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as t_F

from .fkd_transforms import fkd_transform, run_batches


def label_quantization(full_label, k=5):
    """marginal_smoothing_k5 / marginal_renorm_k5 (k = 5) and _k10 (k = 10): per row the k largest
    entries as [ids, values], stacked to a float numpy array (N, 2, k)."""
    out = []
    for p in full_label:
        order = torch.argsort(p, descending=True)
        out.append(torch.stack([order[:k], p[order[:k]]], dim=0))
    return torch.stack(out, 0).detach().numpy()


def label_path(save_path, image_path):
    """<save_path>/<class>/<image name cut at its first dot>.tar, as the writer names it."""
    cls = os.path.basename(os.path.dirname(image_path))
    return os.path.join(save_path, cls, os.path.basename(image_path).split(".")[0] + ".tar")


def write_image_labels(save_path, image_path, coords, flips, probs, k=5):
    """One image's file: coords float32 (N, 4), flips bool (N,), softmax probabilities (N, C)."""
    path = label_path(save_path, image_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save([coords.detach().numpy(), flips.detach().numpy(), label_quantization(probs, k)], path)
    return path


@torch.no_grad()
def relabel(data_dir, save_path, teacher, *, num_crops, input_size=224, k=5, max_images=None):
    """generate_soft_label.py in one process: per image, num_crops crops labelled by `teacher`."""
    dataset = torchvision.datasets.ImageFolder(root=data_dir)
    transform = fkd_transform(input_size)
    teacher.eval()
    crops = 0
    for i, (path, _) in enumerate(dataset.samples[:max_images]):
        img = dataset.loader(path)
        xs, flips, coords = zip(*(transform(img, None, None) for _ in range(num_crops)))
        probs = F.softmax(teacher(torch.stack(xs)), dim=1)
        write_image_labels(save_path, path, torch.stack(coords), torch.tensor(flips), probs, k)
        crops += num_crops
    return crops


class RandomResizedCrop_FKD(torchvision.transforms.RandomResizedCrop):
    def __call__(self, img, coords, status):
        i = coords[0].item() * img.size[1]
        j = coords[1].item() * img.size[0]
        h = coords[2].item() * img.size[1]
        w = coords[3].item() * img.size[0]
        return t_F.resized_crop(img, i, j, h, w, self.size, InterpolationMode.BILINEAR)


class RandomHorizontalFlip_FKD(torch.nn.Module):
    def forward(self, img, coords, status):
        return t_F.hflip(img) if status else img


class Compose_FKD(torchvision.transforms.Compose):
    def __call__(self, img, coords, status):
        for t in self.transforms:
            img = t(img, coords, status) if isinstance(t, (RandomResizedCrop_FKD, RandomHorizontalFlip_FKD)) else t(img)
        return img


def train_transform(size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    from torchvision import transforms

    return Compose_FKD(transforms=[RandomResizedCrop_FKD(size=size), RandomHorizontalFlip_FKD(), transforms.ToTensor(),
                                   transforms.Normalize(mean=list(mean), std=list(std))])


class ImageFolder_FKD(torchvision.datasets.ImageFolder):
    def __init__(self, num_crops, softlabel_path, **kwargs):
        super().__init__(**kwargs)
        self.num_crops, self.softlabel_path = num_crops, softlabel_path

    def __getitem__(self, index):
        path, target = self.samples[index]
        coords, flip_status, output = torch.load(label_path(self.softlabel_path, path), weights_only=False)
        rand_index = torch.randperm(len(output))
        sample = self.loader(path)
        sample_all, hard_target, soft_target = [], [], []
        for i in range(self.num_crops):
            soft_target.append(output[rand_index[i]])
            sample_all.append(self.transform(sample, coords[rand_index[i]], flip_status[rand_index[i]]))
            hard_target.append(target)
        return sample_all, hard_target, soft_target


def recover_soft_label(label, n_classes, k=5):
    """Recover_soft_label(marginal_smoothing_k{k}): (rows, 2, k) -> dense (rows, C)."""
    index = label[:, 0, :].to(dtype=int)
    value = label[:, 1, :]
    minor = (torch.ones(label.size(0), 1) - torch.sum(value, dim=1, keepdim=True)) / (n_classes - k)
    minor = minor.reshape(-1, 1).repeat_interleave(n_classes, dim=1)
    return (minor * torch.ones(index.size(0), n_classes)).scatter_(1, index, value)


def soft_cross_entropy(model_output, soft_output):
    """Soft_CrossEntropy (size_average): -sum(q * log_softmax(z)) averaged over rows."""
    log_prob = F.log_softmax(model_output, dim=1)
    return (-torch.bmm(soft_output.unsqueeze(1), log_prob.unsqueeze(2))).mean()


def soft_loader(data_dir, softlabel_path, *, batch_size, workers, num_crops=1, input_size=224):
    dataset = ImageFolder_FKD(num_crops=num_crops, softlabel_path=softlabel_path, root=data_dir,
                              transform=train_transform(input_size))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=False)


def soft_epoch(loader, step, n_classes, k=5, max_batches=None, on_batch=None):
    """train_FKD.py's loop: `step(images, dense soft labels)`. Returns (samples, batches)."""

    def batches():
        for images, target, soft_label in loader:
            yield torch.cat(images, dim=0), recover_soft_label(torch.cat(soft_label, dim=0), n_classes, k)

    return run_batches(batches(), step, max_batches, on_batch)

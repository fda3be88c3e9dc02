"""The HALD authors' relabel and training path, written from their public code:

  relabel   relabel/relabel_slc.py (`main`, `save`) + relabel/utils_fkd.py: label epochs =
            SLC // IPC; per label epoch e an image order torch.randperm(N, generator seeded
            fkd_seed + e), all saved first as sampler_indices_dict.pt {str(e): [ids]}; an
            EpochBatchSampler replays that order; torchvision ImageFolder (ImageFolder_FKD_MIX,
            fkd_save) with DataLoader workers doing per-sample PIL decode + RandomResizedCropWithCoords
            + flip + ToTensor + Normalize; CutMix per batch; teachers in train mode (batch-specific
            soft labelling, BSSL, for every image kind except RDED's); the ensemble's logits
            weighted (1 / n); soft_labels = softmax(output / T).half() (T = 20); per batch
            [coords.half(), flip, mix_index, mix_lambda, mix_bbox, soft_labels] appended to a list,
            torch.save(list, epoch_<e>.tar) at the end of each label epoch.
  training  train/train_fkd.py (`main`, `soft_train`, `hard_train`) + relabel/utils_fkd_reconstruct.py
            (`EpochBatchSampler`, `FKDConfigManager`, `ImageFolderTensor`):
            soft epoch: FKDConfigManager torch.load-s every epoch_<e>.tar into memory at start;
            each soft epoch draws `batch_num_per_epoch` global batch ids from a seeded pool of
            SLI x batches; an ImageFolderTensor DataLoader (workers: PIL decode + to_tensor of the
            whole image, persistent workers) yields those batches; the main process crops each
            sample (apply_fkd_transform_batch_tensor: a per-sample resized_crop on the float image
            tensor, bilinear, + hflip, then a batched Normalize), replays CutMix, and takes
            KLDivLoss(batchmean)(log_softmax(z / 20), soft_label.float()).
            hard epoch: ImageFolder + RandomResizedCrop + RandomHorizontalFlip + ToTensor +
            Normalize in DataLoader workers, timm Mixup(cutmix_alpha = 1, label_smoothing = 0.8),
            soft cross-entropy; an odd last sample dropped.

Simplified: CPU only; one process instead of relabel_slc.py's worker processes per GPU (each
labels a range of label epochs with the same loop); no wandb, validation, checkpoints or accuracy
meters; the teacher is any module given (the original loads pretrained torchvision models) and
no "real teacher" check model is built in training (it is unused in `soft_train`).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import RandomSampler
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F_vision

from .fkd_transforms import fkd_transform, mix_aug, run_batches

FKD_SEED = 42
TEMPERATURE = 20
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------- sampler
class EpochBatchSampler(RandomSampler):
    """indices_epoch[e]: label epoch e's image order; indices_batch[g]: global batch g's ids;
    batch_list: the global batches this training epoch runs."""

    def __init__(self, data_source, generator=None, initial_epoch=0):
        super().__init__(data_source, generator=generator)
        self.data_source, self.epoch = data_source, initial_epoch
        self.indices_epoch, self.indices_batch = {}, {}
        self.batch_size = self.batch_list = None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def use_batch(self, batch_size):
        self.batch_size = batch_size
        self.indices_batch.clear()
        g = 0
        for ep in sorted(self.indices_epoch):
            indices = self.indices_epoch[ep]
            for i in range(0, len(indices), batch_size):
                self.indices_batch[g] = indices[i:i + batch_size]
                g += 1
        self.batch_num_per_epoch = g // len(self.indices_epoch)

    def set_batch_list(self, batch_list):
        self.batch_list = batch_list

    def __iter__(self):
        if self.batch_list is not None:
            out = []
            for g in self.batch_list:
                out.extend(self.indices_batch[g])
            return iter(out)
        if self.epoch not in self.indices_epoch:
            self.indices_epoch[self.epoch] = list(super().__iter__())
        return iter(self.indices_epoch[self.epoch])

    def __len__(self):
        if self.batch_list is not None:
            return sum(len(self.indices_batch[g]) for g in self.batch_list)
        return len(self.indices_epoch.get(self.epoch, self.data_source))


# ------------------------------------------------------------------------------------------- relabel
class ImageFolder_FKD_MIX_Save(torchvision.datasets.ImageFolder):
    """HALD's relabel dataset (fkd_save): the sample, target, flip, coords and its index."""

    def __getitem__(self, index):
        path, target = self.samples[index]
        sample, flip_status, coords_status = self.transform(self.loader(path), None, None)
        return sample, target, flip_status, coords_status, index


def sampler_indices(num_img, epochs, fkd_seed=FKD_SEED):
    out = {}
    for epoch in range(epochs):
        g = torch.Generator()
        g.manual_seed(fkd_seed + epoch)
        out[str(epoch)] = torch.randperm(num_img, generator=g).tolist()
    return out


@torch.no_grad()
def relabel(data_dir, fkd_path, teachers, *, slc, batch_size, workers, input_size=224, temperature=TEMPERATURE,
            mix_type="cutmix", cutmix=1.0, fkd_seed=FKD_SEED, max_batches=None, eval_mode=False):
    """relabel_slc.py for one worker covering every label epoch; returns crops labelled."""
    dataset = ImageFolder_FKD_MIX_Save(root=data_dir, transform=fkd_transform(input_size))
    ncls = len(dataset.classes)
    ipc = len(dataset) // ncls
    epochs = slc // ipc
    os.makedirs(fkd_path, exist_ok=True)
    info = sampler_indices(len(dataset), epochs, fkd_seed)
    torch.save(info, os.path.join(fkd_path, "sampler_indices_dict.pt"))
    sampler = EpochBatchSampler(dataset)
    sampler.indices_epoch = {int(k): v for k, v in info.items()}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         pin_memory=False)
    teachers = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
    for t in teachers:
        t.eval() if eval_mode else t.train()
    weights = [1.0 / len(teachers)] * len(teachers)
    crops = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        epoch_batch = []
        for batch_idx, (images, target, flip_status, coords_status, index) in enumerate(loader):
            images, mix_index, mix_lam, mix_bbox = mix_aug(images, mix_type, cutmix)
            output = torch.stack([t(images) * w for t, w in zip(teachers, weights)], 0).sum(0)
            soft_labels = F.softmax(output / temperature, dim=1).half()
            epoch_batch.append([coords_status.half(), flip_status, mix_index.cpu(), mix_lam, mix_bbox,
                                soft_labels.cpu()])
            crops += len(images)
            if max_batches is not None and batch_idx + 1 >= max_batches:
                break
        torch.save(epoch_batch, os.path.join(fkd_path, f"epoch_{epoch}.tar"))
    return crops


# ------------------------------------------------------------------------------------------- training
def get_FKD_info(fkd_path):
    max_epoch = len([f for f in os.listdir(fkd_path) if f.endswith(".tar")])
    epoch_file = torch.load(os.path.join(fkd_path, "epoch_0.tar"), weights_only=False)
    batch_size = epoch_file[0][0].shape[0]
    last_batch_size = epoch_file[-1][0].shape[0]
    num_img = batch_size * (len(epoch_file) - 1) + last_batch_size
    return max_epoch, batch_size, num_img


class FKDConfigManager:
    """Every epoch_<e>.tar loaded into memory; get_batch_config(global batch id)."""

    def __init__(self, fkd_path):
        self.fkd_path = fkd_path
        self.max_epoch, self.batch_size, self.num_img = get_FKD_info(fkd_path)
        self.all_epoch_configs = [torch.load(os.path.join(fkd_path, f"epoch_{e}.tar"), map_location="cpu",
                                             weights_only=False) for e in range(self.max_epoch)]
        self.batch_num_per_epoch = len(self.all_epoch_configs[0])

    def get_batch_config(self, global_batch_id):
        e, b = divmod(global_batch_id, self.batch_num_per_epoch)
        return self.all_epoch_configs[e][b]


class ImageFolderTensor(datasets.ImageFolder):
    def __getitem__(self, index):
        path, target = self.samples[index]
        return transforms.functional.to_tensor(self.loader(path)), target, index


def worker_init_fn(worker_id):
    np.random.seed(42 + worker_id)
    torch.manual_seed(42 + worker_id)


def apply_fkd_transform_batch_tensor(images_tensor, coords_list, flip_list, input_size, mean=MEAN, std=STD):
    coords = torch.as_tensor(coords_list, dtype=torch.float32, device="cpu")
    flips = torch.as_tensor(flip_list, dtype=torch.bool, device="cpu")
    B, C, H, W = images_tensor.shape
    out = []
    for idx in range(B):
        i_r, j_r, h_r, w_r = coords[idx]
        i, j, h, w = int(i_r.item() * H), int(j_r.item() * W), int(h_r.item() * H), int(w_r.item() * W)
        img = F_vision.resized_crop(images_tensor[idx], top=i, left=j, height=h, width=w,
                                    size=[input_size, input_size], interpolation=InterpolationMode.BILINEAR)
        out.append(F_vision.hflip(img) if flips[idx] else img)
    imgs = torch.stack(out, 0)
    m = torch.as_tensor(mean, dtype=imgs.dtype).view(1, C, 1, 1)
    s = torch.as_tensor(std, dtype=imgs.dtype).view(1, C, 1, 1)
    return (imgs - m) / s


class SoftTraining:
    """train_fkd.py's soft side: the loader, the sampler and the label manager, built as `main` does."""

    def __init__(self, data_dir, fkd_path, *, batch_size, workers, input_size=224, fkd_seed=FKD_SEED):
        self.input_size, self.fkd_seed = input_size, fkd_seed
        info = torch.load(os.path.join(fkd_path, "sampler_indices_dict.pt"), weights_only=True)
        dataset = ImageFolderTensor(root=data_dir)
        generator = torch.Generator()
        generator.manual_seed(fkd_seed)
        self.sampler = EpochBatchSampler(dataset, generator=generator)
        self.sampler.indices_epoch = {int(k): v for k, v in info.items()}
        self.sampler.use_batch(batch_size)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=self.sampler,
                                                  generator=generator, worker_init_fn=worker_init_fn,
                                                  num_workers=workers, persistent_workers=workers > 0,
                                                  pin_memory=False)
        self.manager = FKDConfigManager(fkd_path)
        self.n = len(self.sampler.indices_epoch)  # train_fkd's --n: label epochs in the pool
        self.pool, self.times = [], 0

    def next_step_list(self):
        """`main`'s pool: each soft epoch takes batch_num_per_epoch ids of a seeded permutation of
        every (label epoch, batch)."""
        if not self.pool:
            g = torch.Generator()
            g.manual_seed(self.fkd_seed + self.times)
            self.pool = torch.randperm(self.n * self.manager.batch_num_per_epoch, generator=g).tolist()
            self.times += 1
        k = self.manager.batch_num_per_epoch
        step_list, self.pool = self.pool[:k], self.pool[k:]
        return step_list

    def epoch(self, step, mix_type="cutmix", max_batches=None, on_batch=None):
        """soft_train: `step(images, soft_label)` per batch. Returns (samples, batches)."""
        step_list = self.next_step_list()
        self.loader.sampler.set_batch_list(step_list)

        def batches():
            for batch_idx, (images_tensor, target, indices) in enumerate(self.loader):
                coords, flips, mix_index, mix_lam, mix_bbox, soft_label = self.manager.get_batch_config(
                    step_list[batch_idx])
                images = apply_fkd_transform_batch_tensor(images_tensor, coords, flips, self.input_size)
                images, _, _, _ = mix_aug(images, mix_type, rand_index=mix_index, lam=mix_lam, bbox=mix_bbox)
                yield images, soft_label.float()

        return run_batches(batches(), step, max_batches, on_batch)


def kl_batchmean(output, soft_label, temperature=TEMPERATURE):
    return torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(output / temperature, dim=1), soft_label)


def soft_cross_entropy(logits, soft_targets):
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class HardTraining:
    """train_fkd.py's hard side: ImageFolder with RRC + flip in the workers, timm Mixup (CutMix)."""

    def __init__(self, data_dir, *, batch_size, workers, input_size=224, ncls=1000, label_smoothing=0.8):
        from timm.data import Mixup

        hard_transform = transforms.Compose([transforms.RandomResizedCrop(input_size), transforms.RandomHorizontalFlip(),
                                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        self.loader = torch.utils.data.DataLoader(datasets.ImageFolder(root=data_dir, transform=hard_transform),
                                                  batch_size=batch_size, shuffle=True, num_workers=workers,
                                                  pin_memory=False)
        self.mixup_fn = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=label_smoothing, num_classes=ncls)

    def epoch(self, step, max_batches=None, on_batch=None):
        """hard_train: `step(inputs, mixed soft targets)` per batch. Returns (samples, batches)."""

        def batches():
            for inputs, labels in self.loader:
                if len(inputs) % 2 != 0:
                    inputs, labels = inputs[:-1], labels[:-1]
                yield self.mixup_fn(inputs, labels)

        return run_batches(batches(), step, max_batches, on_batch)

"""SRe2L's relabel and soft-label training path, written from its public code:

  relabel   SRe2L relabel/generate_soft_label.py (`main_worker`, `save`) + relabel/utils_fkd.py
            (`ImageFolder_FKD_MIX` in fkd_save mode): torchvision ImageFolder, DataLoader workers,
            per-sample PIL decode + RandomResizedCropWithCoords + flip + ToTensor + Normalize, a
            RandomSampler seeded --fkd-seed 42, CutMix per batch, teacher in eval mode, and per batch
            torch.save([coords float32 (B, 4), flip bool (B,), mix_index int64 (B,), mix_lambda float,
            mix_bbox [4 numpy.int64], logits (B, C) (float16 with --use-fp16)]) to
            epoch_<e>/batch_<b>.tar, one label epoch per pass over the images.
  training  SRe2L train/train_FKD.py (`train`) + train/README.md's patched
            torch.utils.data._utils.fetch._MapDatasetFetcher: ImageFolder_FKD_MIX in fkd_load mode;
            the fetcher, in the worker, torch.load-s the batch file of the batch's first image
            (`get_img2batch_idx_list`: the same seeded RandomSampler), the dataset replays each
            sample's stored crop and flip on the PIL image, the batch comes back with
            (mix_index, mix_lambda, mix_bbox, soft_label); the main process replays CutMix and takes
            KLDivLoss(batchmean)(log_softmax(z / T), softmax(soft_label.float() / T)).

Simplified: CPU (no .cuda(), no DataParallel / distributed, no wandb, no accuracy meters, no
gradient accumulation); `get_img2batch_idx_list` is called with the set's size, batch size and label
epochs instead of its hard-coded defaults (50,000 / 1,024 / 300); the teacher is any module given
(the original loads a torchvision pretrained model); the fetcher patch is installed by
`install_patched_fetcher()` (the original edits the installed torch source); `write_batch_file`
is `save`'s torch.save call on its own, for label files written in bulk from precomputed outputs.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from .fkd_transforms import fkd_transform, mix_aug, run_batches

FKD_SEED = 42


# ------------------------------------------------------------------------------------------- dataset
def get_img2batch_idx_list(num_img, batch_size, seed=FKD_SEED, epochs=300):
    train_dataset = torch.utils.data.TensorDataset(torch.arange(num_img))
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(train_dataset, generator=generator)
    batch_sampler = torch.utils.data.BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    img2batch_idx_list = []
    for _ in range(epochs):
        img2batch_idx = {}
        for batch_idx, img_indices in enumerate(batch_sampler):
            img2batch_idx[img_indices[0]] = batch_idx
        img2batch_idx_list.append(img2batch_idx)
    return img2batch_idx_list


class ImageFolder_FKD_MIX(torchvision.datasets.ImageFolder):
    def __init__(self, fkd_path, mode, batch_size=None, label_epochs=None, **kwargs):
        super().__init__(**kwargs)
        self.fkd_path, self.mode = fkd_path, mode
        self.batch_config = None
        self.batch_config_idx = 0
        if self.mode == "fkd_load":
            self.img2batch_idx_list = get_img2batch_idx_list(len(self.samples), batch_size, FKD_SEED, label_epochs)
            self.epoch = None

    def __getitem__(self, index):
        path, target = self.samples[index]
        if self.mode == "fkd_save":
            coords_, flip_ = None, None
        elif self.mode == "fkd_load":
            if self.batch_config is None:
                raise ValueError("config is not loaded")
            coords_ = self.batch_config[0][self.batch_config_idx]
            flip_ = self.batch_config[1][self.batch_config_idx]
            self.batch_config_idx += 1
        else:
            raise ValueError("mode should be fkd_save or fkd_load")
        sample = self.loader(path)
        sample_new, flip_status, coords_status = self.transform(sample, coords_, flip_)
        return sample_new, target, flip_status, coords_status

    def load_batch_config(self, img_idx):
        batch_idx = self.img2batch_idx_list[self.epoch][img_idx]
        path = os.path.join(self.fkd_path, f"epoch_{self.epoch}", f"batch_{batch_idx}.tar")
        config = torch.load(path, weights_only=False)  # the original's torch.load (pickles run)
        self.batch_config_idx = 0
        self.batch_config = config[:2]
        return config[2:]

    def set_epoch(self, epoch):
        self.epoch = epoch


# ------------------------------------------------------------------------------------------- patched fetcher
_original_fetch = None


def _patched_fetch(self, possibly_batched_index):
    fkd = getattr(self.dataset, "mode", None) == "fkd_load"
    if fkd:
        mix_index, mix_lam, mix_bbox, soft_label = self.dataset.load_batch_config(possibly_batched_index[0])
    if self.auto_collation:
        if hasattr(self.dataset, "__getitems__") and self.dataset.__getitems__:
            data = self.dataset.__getitems__(possibly_batched_index)
        else:
            data = [self.dataset[idx] for idx in possibly_batched_index]
    else:
        data = self.dataset[possibly_batched_index]
    if fkd:
        return self.collate_fn(data), mix_index.cpu(), mix_lam, mix_bbox, soft_label.cpu()
    return self.collate_fn(data)


def install_patched_fetcher() -> None:
    """SRe2L train/README.md's edit of _MapDatasetFetcher.fetch (it acts only on fkd_load datasets;
    DataLoader workers forked afterwards inherit it)."""
    global _original_fetch
    from torch.utils.data._utils import fetch

    if _original_fetch is None:
        _original_fetch = fetch._MapDatasetFetcher.fetch
        fetch._MapDatasetFetcher.fetch = _patched_fetch


# ------------------------------------------------------------------------------------------- relabel
def relabel(data_dir, fkd_path, teacher, *, epochs, batch_size, workers, input_size=224, use_fp16=True,
            mix_type="cutmix", cutmix=1.0, fkd_seed=FKD_SEED, max_batches=None):
    """generate_soft_label.py: label `epochs` passes over the folder; returns crops labelled."""
    os.makedirs(fkd_path, exist_ok=True)
    dataset = ImageFolder_FKD_MIX(fkd_path=fkd_path, mode="fkd_save", root=data_dir,
                                  transform=fkd_transform(input_size))
    generator = torch.Generator()
    generator.manual_seed(fkd_seed)
    sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         pin_memory=False)
    if isinstance(teacher, torch.nn.Module):
        teacher.eval()
    crops = 0
    for epoch in range(epochs):
        dir_path = os.path.join(fkd_path, f"epoch_{epoch}")
        os.makedirs(dir_path, exist_ok=True)
        with torch.no_grad():
            for batch_idx, (images, target, flip_status, coords_status) in enumerate(loader):
                images, mix_index, mix_lam, mix_bbox = mix_aug(images, mix_type, cutmix)
                output = teacher(images)
                if use_fp16:
                    output = output.half()
                torch.save([coords_status, flip_status, mix_index, mix_lam, mix_bbox, output.cpu()],
                           os.path.join(dir_path, f"batch_{batch_idx}.tar"))
                crops += len(images)
                if max_batches is not None and batch_idx + 1 >= max_batches:
                    break
    return crops


# ------------------------------------------------------------------------------------------- training
def soft_loader(data_dir, fkd_path, *, batch_size, workers, label_epochs, input_size=224):
    install_patched_fetcher()
    dataset = ImageFolder_FKD_MIX(fkd_path=fkd_path, mode="fkd_load", batch_size=batch_size,
                                  label_epochs=label_epochs, root=data_dir, transform=fkd_transform(input_size))
    generator = torch.Generator()
    generator.manual_seed(FKD_SEED)
    sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       pin_memory=False)


def decode_batch(soft_label, temperature):
    """What train_FKD.py trains towards: softmax(stored logits / T) in float32."""
    return F.softmax(soft_label.float() / temperature, dim=1)


def soft_epoch(loader, epoch, step, temperature=20.0, mix_type="cutmix", max_batches=None, on_batch=None):
    """train_FKD.py `train`: one epoch; `step(images, soft_target)` runs the loss (and the model step
    when there is one). Returns (samples, batches)."""
    loader.dataset.set_epoch(epoch)

    def batches():
        for batch_data in loader:
            images, target, flip_status, coords_status = batch_data[0]
            mix_index, mix_lam, mix_bbox, soft_label = batch_data[1:]
            images, _, _, _ = mix_aug(images, mix_type, rand_index=mix_index, lam=mix_lam, bbox=mix_bbox)
            yield images, decode_batch(soft_label, temperature)

    return run_batches(batches(), step, max_batches, on_batch)


def kl_batchmean(output, soft_target, temperature):
    return torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(output / temperature, dim=1), soft_target)


# ------------------------------------------------------------------------------------------- file writer
def write_batch_file(path, coords, flips, mix_index, mix_lam, mix_bbox, logits_fp16):
    """One batch_<b>.tar exactly as `save` writes it (for bulk files from precomputed outputs)."""
    torch.save([coords, flips, mix_index, mix_lam, mix_bbox, logits_fp16], path)


def sampler_order(num_img, epochs, seed=FKD_SEED):
    """[epochs] image orders the relabel's RandomSampler draws (iterated once per label epoch)."""
    g = torch.Generator()
    g.manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(range(num_img), generator=g)
    return [list(sampler) for _ in range(epochs)]


def bbox_list(b):
    return [np.int64(v) for v in b]

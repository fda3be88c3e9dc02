"""The soft-label pipelines users run today, written here from their public code so that
benchmarks/bench_pipeline.py can measure this package against them on the same machine:

  sre2l.py           SRe2L relabel/generate_soft_label.py and train/train_FKD.py (+ the patched
                     DataLoader fetcher of its train/README.md): per-batch label files
  hald.py            the HALD authors' relabel/relabel_slc.py and train/train_fkd.py: per-epoch
                     label files, soft and hard epochs
  fkd.py             FKD's FKD_SLG/generate_soft_label.py and utils_FKD.py: one label file per image
  fkd_transforms.py  the crop / flip / CutMix transforms they share (relabel/utils_fkd.py)
  images.py          a synthetic distilled image set saved as SRe2L's recover step saves one

Each module says which public file each part follows and what was simplified. They are benchmark
baselines, not part of the package (python_tests/test_baselines.py checks that the label files
they write import into hald_ext's label store and decode to the same rows).
"""

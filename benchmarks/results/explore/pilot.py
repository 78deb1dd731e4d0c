"""Pilot driver: numpy_densenet.training.train on Fashion-MNIST with the augmentation's pad/flip forced (whatever the
data set's own Dataset.augmentation says), logging the load average with every line."""
import os, sys, time, json
import numpy_densenet.training as T
import numpy_densenet.training.run as R
from numpy_densenet.data import BatchIterator
PAD, FLIP = int(sys.argv[1]), sys.argv[2] == "flip"
class BI(BatchIterator):
    def __init__(self, *a, pad=None, flip=None, **k):
        super().__init__(*a, pad=PAD, flip=FLIP, **k)
R.BatchIterator = BI
kw = json.loads(sys.argv[3])
cfg = T.TrainConfig(dataset="fashion-mnist", data_dir="/usr/share/datasets/fashion-mnist", **kw)
def log(msg):
    print(f"{time.strftime('%H:%M:%S')} load {' '.join(f'{v:.2f}' for v in os.getloadavg())} | {msg}", flush=True)
log(f"pad={PAD} flip={FLIP} {kw}")
T.train(cfg, log=log, overwrite=True)

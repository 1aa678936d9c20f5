import sys, time, torch
sys.path.insert(0, '.')
from config import make_config
from model import build_model
from trainer import build_optimizer, run_epoch
from data_loader import load_dataset
images, _ = load_dataset('fashion_mnist', '/usr/share/datasets/fashion-mnist', True, download=False)
idx = torch.arange(5000)
extra = eval(sys.argv[1]) if len(sys.argv) > 1 else {}
cfg = make_config(model='vae', gated=True, hidden_sizes=[300, 300], btl_size=40, binarize=True, lr=5e-4, **extra)
m = build_model(cfg); opt, _ = build_optimizer(m, cfg)
run_epoch(m, images, 100, idx[:1000], opt, binarize=True)
from torch.profiler import profile
with profile() as p:
    run_epoch(m, images, 100, idx, opt, binarize=True)
print(p.key_averages().table(sort_by='self_cpu_time_total', row_limit=25))

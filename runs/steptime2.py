import sys, time, torch
sys.path.insert(0, '.')
from config import make_config
from model import build_model
from trainer import build_optimizer, run_epoch, compiled
from data_loader import load_dataset
images, _ = load_dataset('fashion_mnist', '/usr/share/datasets/fashion-mnist', True, download=False)
idx = torch.arange(20000)
extra = eval(sys.argv[1]) if len(sys.argv) > 1 else {}
torch.manual_seed(0)
cfg = make_config(model='vae', gated=True, hidden_sizes=[300, 300], btl_size=40, binarize=True, lr=5e-4, **extra)
m = build_model(cfg); opt, _ = build_optimizer(m, cfg)
fn = compiled(m.loss) if '--compile' in sys.argv else None
t = time.perf_counter(); run_epoch(m, images, 100, idx[:2000], opt, binarize=True, loss_fn=fn); print('warm', time.perf_counter() - t)
t = time.perf_counter(); run_epoch(m, images, 100, idx, opt, binarize=True, loss_fn=fn); dt = time.perf_counter() - t
print(extra, f'{dt / 200 * 1000:.2f} ms/step', f'{dt*2.5:.1f} s per 50k epoch', flush=True)

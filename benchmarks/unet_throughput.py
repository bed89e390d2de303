"""Training throughput of the image networks: images/s of forward + backward through the EDM
preconditioner and loss, and peak memory, for the DDPM++ and the magnitude-preserving UNet at the
MNIST and CIFAR-10 presets, on the device it runs on; the ratio mp-unet / unet per dataset.

    python -m benchmarks.unet_throughput [--device cpu|cuda] [--batch 16] [--iters 5] [--precision 32|bf16]
                                         [--datasets mnist cifar10]

Each network runs in its own process, so CPU peak memory (the process's maximum resident set, less
what it held before building the network) is that network's alone; on CUDA it is
torch.cuda.max_memory_allocated.
"""

import argparse
import multiprocessing
import resource
import time


CASES = [  # (dataset, network, preset, image shape)
    ('mnist', 'unet', 'ddpmpp-mnist-small', (1, 32, 32)),
    ('mnist', 'mp-unet', 'mnist', (1, 28, 28)),
    ('cifar10', 'unet', 'ddpmpp-cifar10', (3, 32, 32)),
    ('cifar10', 'mp-unet', 'cifar10', (3, 32, 32)),
]


def measure(case, device, batch, iters, precision, queue):
    import torch

    from networks import build_denoiser
    from config import NetworkConfig, PrecondConfig
    from training.loss import edm_loss

    dataset, name, preset, shape = case
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    denoiser = build_denoiser(NetworkConfig(name=name, preset=preset), PrecondConfig(), shape).to(device)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-4)
    generator = torch.Generator(device).manual_seed(0)
    x0 = torch.rand(batch, *shape, generator=generator, device=device) * 2 - 1
    sigma = (torch.randn(batch, generator=generator, device=device) * 1.2 - 1.2).exp()

    def step():
        with torch.autocast(device.split(':')[0], torch.bfloat16, enabled=precision == 'bf16'):
            loss = edm_loss(denoiser, x0, sigma, generator=generator)[0].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocations, kernel selection
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # kB -> MB
    queue.put((batch * iters / (time.perf_counter() - start), peak, sum(p.numel() for p in denoiser.parameters())))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--precision', choices=('32', 'bf16'), default='32')
    parser.add_argument('--datasets', nargs='+', choices=('mnist', 'cifar10'), default=['mnist', 'cifar10'])
    args = parser.parse_args()
    context = multiprocessing.get_context('spawn')
    results = {}
    cases = [case for case in CASES if case[0] in args.datasets]
    for case in cases:
        queue = context.Queue()
        process = context.Process(target=measure, args=(case, args.device, args.batch, args.iters, args.precision, queue))
        process.start()
        results[case[:2]] = queue.get()
        process.join()
    print(f'device {args.device}, batch {args.batch}, {args.iters} timed steps, precision {args.precision}\n')
    print('| dataset | network | preset | parameters | images/s (fwd+bwd) | peak memory (MB) |')
    print('| --- | --- | --- | --- | --- | --- |')
    for dataset, name, preset, _ in cases:
        speed, peak, params = results[dataset, name]
        print(f'| {dataset} | {name} | {preset} | {params / 1e6:.2f} M | {speed:.1f} | {peak:.0f} |')
    for dataset in args.datasets:
        ratio = results[dataset, 'mp-unet'][0] / results[dataset, 'unet'][0]
        print(f'\n{dataset}: mp-unet / unet images/s = {ratio:.2f}', end='')
    print()


if __name__ == '__main__':
    main()

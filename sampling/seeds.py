"""One random stream per sample, named by its seed (EDM's seed ranges): sample i's noise depends only
on seeds[i], so results are identical however the seeds are batched or split across processes."""

import torch


class SeedGenerator:
    """A generator for the solvers' `generator` argument, with one torch generator per sample."""

    def __init__(self, seeds, device='cpu'):
        self.generators = [torch.Generator(device).manual_seed(int(seed)) for seed in seeds]

    def __len__(self):
        return len(self.generators)

    def randn(self, shape, device=None, dtype=None):
        """Standard normal [len(self), *shape[1:]]: row i from generator i."""
        if shape[0] != len(self.generators):
            raise ValueError(f'shape: {shape[0]} rows for {len(self.generators)} seeds')
        return torch.stack([torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in self.generators])


    def randint(self, high, device=None):
        """One integer in [0, high) [len(self)]: entry i from generator i (after what it drew before)."""
        return torch.stack([torch.randint(high, (), generator=g, device=device) for g in self.generators])


def parse_seeds(text, noun='seed', example='0-49999'):
    """'0-49999', '1,2,5-10' -> [ints], in order, inclusive ranges; ValueError with the bad part, naming the
    numbers by `noun` (sample.py reads class labels this way too: noun 'class', example '0-9')."""
    seeds = []
    for part in text.split(','):
        start, dash, end = part.strip().partition('-')
        try:
            first, last = int(start), int(end if dash else start)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a {noun} or a range such as {example}") from None
        if first < 0 or last >= 1 << 63:
            raise ValueError(f"{part.strip()!r}: {noun} numbers must be in [0, 2^63)")
        if last < first:
            raise ValueError(f"{part.strip()!r}: empty range (the end is before the start)")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{text!r}: a {noun} appears twice")
    return seeds

import pickle

import pytest
import torch

from vsr.noise import FreshNoise, NoiseContext, SharedNoise, gaussian_field, make_noise


def ctx(indices, h, w, n_low=None):
    """A NoiseContext for frames `indices` at target size h x w (the pictures do not matter
    to the Gaussian sources, so they are zeros)."""
    n = len(indices)
    ac = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    return NoiseContext(tuple(indices), torch.zeros(n, 3, h // 2, w // 2), torch.zeros(n, 3, h, w), 100, ac)


def test_gaussian_field_is_a_seeded_standard_normal():
    a = gaussian_field(7, 64, 96)
    assert a.shape == (3, 64, 96) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, gaussian_field(7, 64, 96))
    assert not torch.equal(a, gaussian_field(8, 64, 96))
    assert abs(float(a.mean())) < 0.03 and abs(float(a.std()) - 1) < 0.03


def test_shared_noise_is_one_field_broadcast_over_frames_and_instances():
    s = SharedNoise(3)
    a = s(ctx([0, 1, 17], 40, 50))
    assert a.shape == (1, 3, 40, 50)  # one field, broadcast over the batch
    assert torch.equal(a[0], gaussian_field(3, 40, 50))
    assert torch.equal(a, SharedNoise(3)(ctx([5], 40, 50)))
    assert s(ctx([0], 40, 60)).shape == (1, 3, 40, 60)
    assert torch.equal(pickle.loads(pickle.dumps(s))(ctx([9], 40, 50)), a)
    assert s.noise_level(2.0) is None  # the card's PRF decides the timestep


def test_fresh_noise_depends_on_frame_index_only_not_on_batching():
    f = FreshNoise(3)
    both = f(ctx([0, 1], 16, 16))
    assert both.shape == (2, 3, 16, 16) and not torch.equal(both[0], both[1])
    assert torch.equal(both[1], f(ctx([1], 16, 16))[0])  # batch of one or two: the same field
    assert torch.equal(both[0], FreshNoise(3).field(0, 16, 16))
    assert not torch.equal(both[0], FreshNoise(4).field(0, 16, 16))
    assert isinstance(make_noise("fresh", 0), FreshNoise) and isinstance(make_noise("shared", 0), SharedNoise)


def test_unknown_noise_mode_names_the_choices():
    with pytest.raises(ValueError, match="shared, fresh"):
        make_noise("pink", 0)

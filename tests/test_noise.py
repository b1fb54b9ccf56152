import pickle

import torch

from vsr.noise import FreshNoise, SharedNoise, gaussian_field, make_noise


def test_gaussian_field_is_a_seeded_standard_normal():
    a = gaussian_field(7, 64, 96)
    assert a.shape == (3, 64, 96) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, gaussian_field(7, 64, 96))
    assert not torch.equal(a, gaussian_field(8, 64, 96))
    assert abs(float(a.mean())) < 0.03 and abs(float(a.std()) - 1) < 0.03


def test_shared_noise_is_the_same_field_for_every_frame_and_instance():
    s = SharedNoise(3)
    a = s(0, 40, 50)
    assert torch.equal(a, s(17, 40, 50))
    assert torch.equal(a, SharedNoise(3)(5, 40, 50))
    assert s(0, 40, 60).shape == (3, 40, 60)
    assert torch.equal(pickle.loads(pickle.dumps(s))(9, 40, 50), a)


def test_fresh_noise_depends_on_frame_index_only():
    f = FreshNoise(3)
    a, b = f(0, 16, 16), f(1, 16, 16)
    assert not torch.equal(a, b)
    assert torch.equal(a, FreshNoise(3)(0, 16, 16)) and torch.equal(b, f(1, 16, 16))
    assert not torch.equal(a, FreshNoise(4)(0, 16, 16))
    assert isinstance(make_noise("fresh", 0), FreshNoise) and isinstance(make_noise("shared", 0), SharedNoise)

import pickle

import pytest
import torch

from store.runs import save_tensors, write_json
from tokenizer import Tokenizer
from tokenizer.model import TokenizerConfig, VQVAE, build_tokenizer_model
import dataclasses


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    config = TokenizerConfig(hidden_channels=8, residual_channels=4, latent_dim=4, codebook_size=300)
    model = VQVAE(config)
    save_tensors(tmp_path / "model.safetensors", model.state_dict())
    write_json(tmp_path / "config.json", {"model": dataclasses.asdict(config)})
    return tmp_path


def test_encode_decode_shapes_dtypes_and_range(run_dir):
    tokenizer = Tokenizer.load(run_dir)
    images = torch.rand(5, 1, 28, 28)
    tokens = tokenizer.encode(images)
    assert tokens.shape == (5, 7, 7) and tokens.dtype == torch.int64
    assert torch.equal(tokenizer.encode((images * 255).round().to(torch.uint8)),
                       tokenizer.encode((images * 255).round() / 255))
    decoded = tokenizer.decode(tokens)
    assert decoded.shape == (5, 1, 28, 28) and decoded.dtype == torch.float32
    assert 0 <= decoded.min() and decoded.max() <= 1
    assert torch.equal(tokenizer.decode(tokens.to(torch.int16)), decoded)


def test_three_channel_32px_gives_an_8x8_grid():
    model = VQVAE(TokenizerConfig(image_channels=3, image_size=32, hidden_channels=8, residual_channels=4,
                                  latent_dim=4, codebook_size=16))
    tokenizer = Tokenizer(model)
    tokens = tokenizer.encode(torch.rand(2, 3, 32, 32))
    assert tokens.shape == (2, 8, 8)
    assert tokenizer.decode(tokens).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("size,factor,stage_blocks", [(32, 4, 0), (32, 8, 1), (64, 8, 0), (64, 16, 1), (48, 16, 0)])
def test_every_downsampling_factor_gives_its_grid(size, factor, stage_blocks):
    model = VQVAE(TokenizerConfig(image_channels=3, image_size=size, downsample=factor, hidden_channels=8,
                                  residual_channels=4, latent_dim=4, codebook_size=16,
                                  stage_residual_blocks=stage_blocks))
    tokenizer = Tokenizer(model)
    tokens = tokenizer.encode(torch.rand(2, 3, size, size))
    assert tokens.shape == (2, size // factor, size // factor) == (2, *tokenizer.grid_shape)
    assert tokenizer.decode(tokens).shape == (2, 3, size, size)
    strided = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == {4: 2, 8: 3, 16: 4}[factor]


@pytest.mark.parametrize("call,message", [
    (lambda t: t.encode(torch.rand(2, 3, 28, 28)), "shape"),
    (lambda t: t.encode(torch.rand(2, 1, 32, 32)), "shape"),
    (lambda t: t.encode(torch.rand(1, 28, 28)), "shape"),
    (lambda t: t.encode(torch.ones(2, 1, 28, 28, dtype=torch.int32)), "float"),
    (lambda t: t.encode([[0.0]]), "tensor"),
    (lambda t: t.decode(torch.full((1, 7, 7), 300)), "0..299"),
    (lambda t: t.decode(torch.full((1, 7, 7), -1)), "0..299"),
    (lambda t: t.decode(torch.zeros(1, 7, 7)), "integer"),
    (lambda t: t.decode(torch.zeros(1, 8, 8, dtype=torch.long)), "shape"),
])
def test_bad_library_input_raises_one_clear_value_error(run_dir, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call(Tokenizer.load(run_dir))
    assert "\n" not in str(info.value)


def test_missing_truncated_and_pickled_weights_are_value_errors(run_dir):
    weights = run_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        Tokenizer.load(run_dir)

    class Boom:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(run_dir / "pwned"),))

    weights.write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(ValueError, match="not a readable safetensors"):
        Tokenizer.load(run_dir)
    assert not (run_dir / "pwned").exists(), "a pickle was executed"
    weights.unlink()
    with pytest.raises(ValueError, match="missing"):
        Tokenizer.load(run_dir)
    with pytest.raises(ValueError, match="does not exist"):
        Tokenizer.load(run_dir / "nope")


def test_weights_of_another_shape_are_a_value_error(run_dir):
    other = VQVAE(TokenizerConfig(hidden_channels=16, residual_channels=4, latent_dim=4, codebook_size=300))
    save_tensors(run_dir / "model.safetensors", other.state_dict())
    with pytest.raises(ValueError, match="do not fit"):
        Tokenizer.load(run_dir)


@pytest.mark.parametrize("size,channels,grids", [(28, 1, ((4, 4), (7, 7))), (32, 3, ((4, 4), (8, 8)))])
def test_two_levels_give_a_top_and_a_bottom_map(size, channels, grids):
    model = build_tokenizer_model(TokenizerConfig(image_channels=channels, image_size=size, hierarchy=2,
                                                  hidden_channels=8, residual_channels=4, latent_dim=4,
                                                  codebook_size=16))
    tokenizer = Tokenizer(model)
    top, bottom = tokenizer.encode(torch.rand(3, channels, size, size))
    assert (tuple(top.shape[1:]), tuple(bottom.shape[1:])) == grids == tuple(tokenizer.level_shapes.values())
    assert list(tokenizer.level_shapes) == ["top", "bottom"] and top.dtype == bottom.dtype == torch.int64
    assert tokenizer.decode((top, bottom)).shape == (3, channels, size, size)
    # The top map matters: other top codes, other images.
    assert not torch.equal(tokenizer.decode((top, bottom)), tokenizer.decode(((top + 1) % 16, bottom)))

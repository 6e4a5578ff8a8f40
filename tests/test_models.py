from __future__ import annotations

import timm
import torch

from birdpipe.config import MelConfig, ModelConfig
from birdpipe.models.sed import build_model, load_model, model_meta, probabilities, save_checkpoint

CFG = ModelConfig(backbone="test_efficientnet", drop_rate=0.0, drop_path_rate=0.0)


def test_forward_shapes_for_both_input_layouts_and_channel_counts():
    x = torch.randn(2, 32, 64)
    for in_chans in (1, 3):
        model = build_model(ModelConfig(backbone="test_efficientnet", in_chans=in_chans), 5).eval()
        clip, frame = model(x)
        assert clip.shape == (2, 5)
        assert frame.shape[0] == 2 and frame.shape[2] == 5 and frame.shape[1] >= 1
        clip4, _ = model(x.unsqueeze(1))
        torch.testing.assert_close(clip, clip4)


def test_clip_logit_is_attention_weighted_mean_of_frame_logits():
    """Softmax weights sum to 1, so the clip logit lies between the frame logits' min and max."""
    model = build_model(CFG, 3).eval()
    clip, frame = model(torch.randn(4, 32, 128))
    assert torch.all(clip <= frame.amax(dim=1) + 1e-5) and torch.all(clip >= frame.amin(dim=1) - 1e-5)


def test_probabilities_blend_clip_and_frame_max():
    clip = torch.tensor([[0.0]])
    frame = torch.tensor([[[-10.0], [10.0]]])
    expected = 0.75 * 0.5 + 0.25 * torch.sigmoid(torch.tensor(10.0))
    torch.testing.assert_close(probabilities(clip, frame, 0.75), expected.reshape(1, 1))


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model = build_model(CFG, 4).eval()
    meta = model_meta(model, ["a", "b", "c", "d"], MelConfig(), fold=0, epoch=3, score=0.5)
    save_checkpoint(tmp_path / "m.pt", model, meta, step=7)
    loaded, loaded_meta = load_model(tmp_path / "m.pt")
    assert loaded_meta["classes"] == ["a", "b", "c", "d"] and loaded_meta["epoch"] == 3
    x = torch.randn(2, 32, 64)
    torch.testing.assert_close(model(x)[0], loaded(x)[0])


def test_pretrained_weights_from_local_file_adapt_to_one_channel(tmp_path):
    source = timm.create_model("test_efficientnet", pretrained=False)  # 3 channels + classifier
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = build_model(ModelConfig(backbone="test_efficientnet", pretrained_weights=str(tmp_path / "w.pth")), 2)
    expected = source.conv_stem.weight.sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.backbone.conv_stem.weight, expected)
    torch.testing.assert_close(model.backbone.bn1.weight, source.bn1.weight)

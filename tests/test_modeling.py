"""SC-CLIP's computation against straightforward reimplementations of the spec (per token, per window, per image)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.neighbors import LocalOutlierFactor
from tiny_models import DEVICES, full_float32, on_device, tiny_clip_model, tiny_scclip_config
from transformers import AutoConfig, AutoModel
from transformers.activations import QuickGELUActivation
from transformers.models.clip.modeling_clip import CLIPMLP

from modeling_scclip import SCCLIPConfig, SCCLIPForSemanticSegmentation
from modeling_scclip.modeling_scclip import (
    InPlaceQuickGELU,
    aggregation_operator,
    cosine_similarity_matrix,
    pairwise_squared_distances,
    released_lof_scores,
    resolve_anomalies,
    select_anomalies,
    similarity_attention,
    standard_lof_scores,
)


TINY_OVERRIDES = dict(slide_crop_size=64, slide_stride=32, lof_n_neighbors=8)


@pytest.fixture(scope="module")
def clip():
    return tiny_clip_model(seed=0)


@pytest.fixture(scope="module")
def model(clip):
    return SCCLIPForSemanticSegmentation.from_clip(clip, **TINY_OVERRIDES)


def make_model(clip, **overrides):
    return SCCLIPForSemanticSegmentation.from_clip(clip, **{**TINY_OVERRIDES, **overrides})


# ----------------------------------------------------------------------------------------------------------------
# Straightforward reference implementations of the spec, one image / one token / one head at a time, in float64.
# ----------------------------------------------------------------------------------------------------------------


def loop_released_lof(tokens, k):
    tokens = tokens.double()
    n = tokens.shape[0]
    kdist, neighbours = [], []
    for p in range(n):
        distances = ((tokens - tokens[p]) ** 2).sum(-1)
        order = torch.argsort(distances, stable=True)
        order = order[order != p][:k]
        neighbours.append(order)
        kdist.append(distances[order[-1]])
    lrd = torch.stack([k / d for d in kdist])
    return torch.stack([(lrd[neighbours[p]] / lrd[p]).mean() for p in range(n)])


def loop_resolve(tokens, anomalies, height, width):
    resolved = tokens.clone()
    for index in range(height * width):
        if not anomalies[index]:
            continue
        row, column = divmod(index, width)
        neighbours = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = row + dr, column + dc
                if (dr, dc) != (0, 0) and 0 <= r < height and 0 <= c < width and not anomalies[r * width + c]:
                    neighbours.append(tokens[r * width + c])
        if neighbours:
            resolved[index] = torch.stack(neighbours).mean(0)
    return resolved


def loop_aggregation(similarity, beta):
    result = torch.zeros_like(similarity)
    for i in range(similarity.shape[0]):
        row = torch.where(similarity[i] < beta, torch.zeros_like(similarity[i]), similarity[i])
        result[i] = row / (row.sum() + 1e-6)
    return result


def cosine(tokens):
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    return tokens @ tokens.T


def loop_attention(layer, tokens, pre_similarity, enhance, temperature=3.0):
    attention = layer.self_attn
    x = F.layer_norm(
        tokens,
        (tokens.shape[-1],),
        layer.layer_norm1.weight.double(),
        layer.layer_norm1.bias.double(),
        layer.layer_norm1.eps,
    )
    keys = x @ attention.k_proj.weight.double().T + attention.k_proj.bias.double()
    values = x @ attention.v_proj.weight.double().T + attention.v_proj.bias.double()
    m = temperature * (pre_similarity - pre_similarity.mean())
    m = torch.where(m < 0, torch.full_like(m, -math.inf), m)
    heads = []
    d = attention.head_dim
    for h in range(attention.num_heads):
        k_h, v_h = keys[:, h * d : (h + 1) * d], values[:, h * d : (h + 1) * d]
        weights = torch.softmax(k_h @ k_h.T / math.sqrt(d), dim=-1)
        if enhance:
            weights = 0.5 * (weights + torch.softmax(m, dim=-1))
        heads.append(weights @ v_h)
    return torch.cat(heads, dim=-1) @ attention.out_proj.weight.double().T + attention.out_proj.bias.double()


def reference_dense_features(clip, config, window):
    """Spec steps 1-10 for one window (1, 3, H, W) from CLIPModel's own hidden states."""
    with torch.no_grad():
        outputs = clip.vision_model(window, output_hidden_states=True, interpolate_pos_encoding=True)
    hidden = [h[0].double() for h in outputs.hidden_states]  # hidden[l] = X_l, hidden[0] = X_0
    grid_h, grid_w = window.shape[-2] // config.patch_size, window.shape[-1] // config.patch_size
    L = config.num_hidden_layers
    last, cls = hidden[L - 1][1:], hidden[L - 1][:1]
    pre = hidden[config.pre_adjust_layer][1:]
    if config.use_anomaly_resolution:
        k = min(config.lof_n_neighbors, last.shape[0] - 1)
        lof = loop_released_lof(last, k)
        anomalies = lof > torch.quantile(lof, 1 - config.lof_contamination)
        last, pre = loop_resolve(last, anomalies, grid_h, grid_w), loop_resolve(pre, anomalies, grid_h, grid_w)
    s_pre = cosine(pre)
    s_post = cosine(hidden[config.post_adjust_layer][1:])
    beta, weight = config.similarity_threshold, config.cls_residual_weight
    layer = clip.vision_model.encoder.layers[L - 1]
    enhance = config.use_attention_enhancement
    z = loop_aggregation(s_pre, beta) @ last if config.use_feature_aggregation else last
    y = loop_attention(layer, z, s_pre, enhance) + weight * cls
    if config.use_feature_aggregation:
        y = loop_aggregation(s_post, beta) @ y
    if config.use_multi_level_fusion:
        fused = sum(
            hidden[layer_index] for layer_index in range(config.fusion_start_layer, config.fusion_end_layer + 1)
        )
        y_f = loop_attention(layer, fused[1:], s_pre, enhance) + weight * fused[:1]
        if config.use_feature_aggregation:
            y_f = loop_aggregation(s_post, beta) @ y_f
        y = y + y_f
    post_ln = clip.vision_model.post_layernorm
    y = F.layer_norm(y, (y.shape[-1],), post_ln.weight.double(), post_ln.bias.double(), post_ln.eps)
    features = y @ clip.visual_projection.weight.double().T
    return features.T.reshape(-1, grid_h, grid_w)


def reference_slide_logits(clip, config, image, text_embeds):
    """Spec 'Whole image' for one image (3, H, W): one window at a time, canvas and count by hand."""
    crop, stride, patch = config.slide_crop_size, config.slide_stride, config.patch_size
    _, height, width = image.shape
    queries = F.normalize(text_embeds.double(), dim=-1)
    canvas = torch.zeros(queries.shape[0], height, width, dtype=torch.float64)
    count = torch.zeros(height, width, dtype=torch.float64)

    def starts(length):
        n = max(length - crop + stride - 1, 0) // stride + 1
        return [max(min(i * stride, length - crop), 0) for i in range(n)]

    for top in starts(height):
        for left in starts(width):
            h, w = min(crop, height), min(crop, width)
            window = image[:, top : top + h - h % patch, left : left + w - w % patch][None]
            features = F.normalize(reference_dense_features(clip, config, window), dim=0)
            logits = torch.einsum("dhw,qd->qhw", features, queries)[None]
            canvas[:, top : top + h, left : left + w] += F.interpolate(
                logits, size=(h, w), mode="bilinear", align_corners=False
            )[0]
            count[top : top + h, left : left + w] += 1
    return canvas / count


# ----------------------------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------------------------


def test_released_lof_equals_per_token_loop():
    torch.manual_seed(0)
    tokens = torch.randn(2, 64, 16) * torch.linspace(0.5, 3, 64)[None, :, None]
    scores = released_lof_scores(tokens, 8)
    for image in range(2):
        expected = loop_released_lof(tokens[image], 8)
        torch.testing.assert_close(scores[image].double(), expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(select_anomalies(scores, 0.05)[image], expected > torch.quantile(expected, 0.95))


def test_standard_lof_matches_scikit_learn():
    torch.manual_seed(1)
    tokens = torch.randn(3, 100, 12)
    tokens[:, :4] *= 4  # a few clear outliers
    scores = standard_lof_scores(tokens, 10)
    selected = select_anomalies(scores, 0.05)
    for image in range(3):
        lof = LocalOutlierFactor(n_neighbors=10, contamination=0.05).fit(tokens[image].numpy().astype(np.float64))
        np.testing.assert_allclose(scores[image].numpy(), -lof.negative_outlier_factor_, rtol=1e-5)
        sklearn_outliers = lof.negative_outlier_factor_ < lof.offset_
        np.testing.assert_array_equal(selected[image].numpy(), sklearn_outliers)
    assert selected.sum(dim=1).tolist() == [5, 5, 5]


def test_anomaly_selection_is_per_image(model):
    torch.manual_seed(2)
    patches = torch.randn(2, 64, 128)
    patches[1, 10] *= 50  # one huge outlier in the second image must not change the first image's selection
    both = model.find_anomaly_tokens(patches)
    assert torch.equal(both[0], model.find_anomaly_tokens(patches[:1])[0])
    assert both[1, 10]


def test_l2_norm_detector_selects_largest_norm_tokens(clip):
    model = make_model(clip, anomaly_detector="l2_norm", lof_contamination=0.1)
    torch.manual_seed(3)
    patches = torch.randn(1, 64, 128)
    norms = patches.norm(dim=-1)[0]
    selected = model.find_anomaly_tokens(patches)[0]
    expected = norms > torch.quantile(norms, 0.9)
    assert torch.equal(selected, expected) and selected.sum() == 7  # above position 0.9 * 63 = 56.7
    assert norms[selected].min() > norms[~selected].max()


def test_resolution_equals_neighbour_loop():
    torch.manual_seed(4)
    height, width = 5, 7
    tokens = torch.randn(2, height * width, 6)
    anomalies = torch.zeros(2, height * width, dtype=torch.bool)
    anomalies[0, [0, 1, 7, 8, 20, 34]] = True  # a corner block, an interior token, the last corner
    anomalies[1, [3, 17]] = True
    resolved = resolve_anomalies(tokens, anomalies, (height, width))
    for image in range(2):
        expected = loop_resolve(tokens[image], anomalies[image], height, width)
        torch.testing.assert_close(resolved[image], expected)
    # Tokens that are not anomalies never change.
    assert torch.equal(resolved[~anomalies], tokens[~anomalies])


def test_resolution_keeps_a_token_with_no_valid_neighbour():
    tokens = torch.arange(9, dtype=torch.float32).reshape(1, 9, 1)
    anomalies = torch.ones(1, 9, dtype=torch.bool)
    assert torch.equal(resolve_anomalies(tokens, anomalies, (3, 3)), tokens)


def test_aggregation_operator_equals_formula():
    torch.manual_seed(5)
    similarity = torch.rand(2, 10, 10) * 2 - 1
    result = aggregation_operator(similarity, 0.4)
    for image in range(2):
        torch.testing.assert_close(result[image], loop_aggregation(similarity[image], 0.4))


def test_similarity_attention_equals_formula():
    torch.manual_seed(6)
    tokens = torch.randn(2, 12, 8)
    similarity = torch.stack([cosine(t) for t in tokens])
    result = similarity_attention(similarity, 3.0)
    for image in range(2):
        m = 3.0 * (similarity[image] - similarity[image].mean())
        expected = torch.softmax(torch.where(m < 0, torch.full_like(m, -math.inf), m), dim=-1)
        torch.testing.assert_close(result[image], expected)


@pytest.mark.parametrize("enhance", [True, False])
def test_self_calibrated_attention_equals_per_head_loop(model, enhance):
    torch.manual_seed(7)
    tokens = torch.randn(2, 16, 128)
    similarity = torch.stack([cosine(t) for t in tokens])
    layer = model.encoder.layers[-1]
    with torch.no_grad():
        result = layer.self_calibrated_attention(tokens, similarity_attention(similarity, 3.0) if enhance else None)
    for image in range(2):
        expected = loop_attention(layer, tokens[image].double(), similarity[image].double(), enhance)
        torch.testing.assert_close(result[image].double(), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Whole model
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (40, 64), (64, 24)])
def test_dense_features_equal_reference(clip, model, size):
    torch.manual_seed(8)
    window = torch.randn(1, 3, *size)
    with torch.no_grad():
        features = model.get_dense_image_features(window)[0]
    expected = reference_dense_features(clip, model.config, window)
    torch.testing.assert_close(features.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "switch",
    ["use_anomaly_resolution", "use_attention_enhancement", "use_feature_aggregation", "use_multi_level_fusion"],
)
def test_each_ablation_switch_matches_reference_and_changes_output(clip, model, switch):
    torch.manual_seed(9)
    window = torch.randn(1, 3, 64, 64)
    ablated = make_model(clip, **{switch: False})
    with torch.no_grad():
        features = ablated.get_dense_image_features(window)[0]
        default = model.get_dense_image_features(window)[0]
    torch.testing.assert_close(
        features.double(), reference_dense_features(clip, ablated.config, window), rtol=1e-4, atol=1e-4
    )
    assert (features - default).abs().max() > 1e-3


def test_all_switches_off_is_plain_key_key_attention(clip):
    switches = [
        "use_anomaly_resolution",
        "use_attention_enhancement",
        "use_feature_aggregation",
        "use_multi_level_fusion",
    ]
    model = make_model(clip, **dict.fromkeys(switches, False))
    torch.manual_seed(10)
    window = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.get_dense_image_features(window)[0]
        hidden = clip.vision_model(window, output_hidden_states=True).hidden_states[11][0]
        layer = clip.vision_model.encoder.layers[11]
        attention = layer.self_attn
        x = layer.layer_norm1(hidden[1:])
        keys = attention.k_proj(x).reshape(64, 2, 64).transpose(0, 1)
        values = attention.v_proj(x).reshape(64, 2, 64).transpose(0, 1)
        weights = torch.softmax(keys @ keys.transpose(1, 2) / 8.0, dim=-1)
        y = attention.out_proj((weights @ values).transpose(0, 1).reshape(64, 128)) + 0.3 * hidden[:1]
        expected = clip.visual_projection(clip.vision_model.post_layernorm(y)).T.reshape(32, 8, 8)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("detector", ["standard_lof", "l2_norm"])
def test_other_detectors_run_end_to_end_and_differ(clip, model, detector):
    torch.manual_seed(11)
    window = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = make_model(clip, anomaly_detector=detector).get_dense_image_features(window)
        assert torch.isfinite(features).all()
        assert (features - model.get_dense_image_features(window)).abs().max() > 0


def test_batched_images_equal_one_by_one(model):
    torch.manual_seed(12)
    windows = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batched = model.get_dense_image_features(windows)
        single = torch.cat([model.get_dense_image_features(w[None]) for w in windows])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(100, 150), (64, 64), (40, 70), (130, 64)])
def test_slide_inference_equals_per_window_reference(clip, model, size, device):
    torch.manual_seed(13)
    image = torch.randn(3, *size)
    text_embeds = torch.randn(4, 32)
    with torch.no_grad(), full_float32(device):
        # Inputs on the CPU: the model moves them to its device.
        logits = on_device(model, device)(pixel_values=image[None], text_embeds=text_embeds).logits[0]
    expected = reference_slide_logits(clip, model.config, image, text_embeds)
    assert logits.shape == (4, *size) and logits.dtype == torch.float32 and logits.device.type == device
    torch.testing.assert_close(logits.cpu().double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_windows_batched_equal_windows_looped(clip, model, device):
    torch.manual_seed(14)
    images = torch.randn(2, 3, 96, 160, device=device)  # 2 x 4 windows per image
    text_embeds = torch.randn(3, 32, device=device)
    model = on_device(model, device)
    looped = make_model(clip, window_batch_size=1).to(device)
    chunked = make_model(clip, window_batch_size=3).to(device)
    # cuDNN may pick another TF32 convolution algorithm for another batch size: compare in full float32.
    with torch.no_grad(), full_float32(device):
        all_at_once = model(pixel_values=images, text_embeds=text_embeds).logits
        for other in (looped, chunked):
            torch.testing.assert_close(
                other(pixel_values=images, text_embeds=text_embeds).logits, all_at_once, rtol=1e-5, atol=1e-5
            )
        one_by_one = torch.cat([model(pixel_values=image[None], text_embeds=text_embeds).logits for image in images])
    torch.testing.assert_close(all_at_once, one_by_one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_images_of_different_sizes_as_a_list(model, device):
    torch.manual_seed(15)
    images = [torch.randn(3, 100, 150), torch.randn(3, 40, 70), torch.randn(3, 64, 64)]
    images = [image.to(device) for image in images]
    text_embeds = torch.randn(2, 32, device=device)
    model = on_device(model, device)
    with torch.no_grad():
        logits = model(pixel_values=images, text_embeds=text_embeds).logits
        assert isinstance(logits, list) and [tuple(image_logits.shape) for image_logits in logits] == [
            (2, 100, 150),
            (2, 40, 70),
            (2, 64, 64),
        ]
        for image, image_logits in zip(images, logits):
            torch.testing.assert_close(
                image_logits, model(pixel_values=image[None], text_embeds=text_embeds).logits[0], rtol=1e-5, atol=1e-5
            )


def test_image_of_one_window_equals_dense_path(model):
    torch.manual_seed(16)
    image = torch.randn(1, 3, 64, 64)
    text_embeds = torch.randn(5, 32)
    with torch.no_grad():
        logits = model(pixel_values=image, text_embeds=text_embeds).logits
        features = F.normalize(model.get_dense_image_features(image), dim=1)
        expected = torch.einsum("bdhw,qd->bqhw", features, F.normalize(text_embeds, dim=-1))
        expected = F.interpolate(expected, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_input_ids_equal_text_embeds(model):
    input_ids = torch.tensor([[103, 5, 6, 104], [103, 9, 104, 104]])
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        from_ids = model(pixel_values=image, input_ids=input_ids).logits
        from_embeds = model(pixel_values=image, text_embeds=model.get_text_features(input_ids)).logits
    torch.testing.assert_close(from_ids, from_embeds)


def test_text_features_equal_clip(clip, model):
    input_ids = torch.tensor([[103, 5, 6, 104], [103, 9, 7, 104]])
    with torch.no_grad():
        expected = clip.get_text_features(input_ids=input_ids).pooler_output
        torch.testing.assert_close(model.get_text_features(input_ids), expected, rtol=0, atol=0)


def test_plain_clip_features_equal_clip(clip, model):
    window = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = clip.vision_model(window).last_hidden_state[:, 1:]
        expected = (
            clip.visual_projection(clip.vision_model.post_layernorm(tokens)).transpose(1, 2).reshape(2, 32, 8, 8)
        )
        torch.testing.assert_close(model.get_plain_clip_dense_features(window), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_in_place_quick_gelu_equals_clip_activation(dtype, device):
    torch.manual_seed(23)
    hidden_states = (4 * torch.randn(3, 7, 64)).to(device=device, dtype=dtype)
    expected = QuickGELUActivation()(hidden_states)
    buffer = hidden_states.clone()
    with torch.no_grad():
        result = InPlaceQuickGELU()(buffer)
    assert torch.equal(result, expected) and result.data_ptr() == buffer.data_ptr()
    # With autograd recording, the input is left intact and the gradient is QuickGELU's.
    leaves = [hidden_states.float().requires_grad_() for _ in range(2)]
    for activation, leaf in zip((QuickGELUActivation(), InPlaceQuickGELU()), leaves):
        activation(leaf).sum().backward()
    assert torch.equal(leaves[1].detach(), hidden_states.float())
    torch.testing.assert_close(leaves[1].grad, leaves[0].grad, rtol=0, atol=0)


def test_every_quick_gelu_mlp_runs_in_place(model):
    mlps = [module for module in model.modules() if isinstance(module, CLIPMLP)]
    assert len(mlps) == model.config.num_hidden_layers + model.config.text_config.num_hidden_layers
    assert all(isinstance(mlp.activation_fn, InPlaceQuickGELU) for mlp in mlps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_float32(clip, model, dtype, device):
    torch.manual_seed(17)
    image = torch.randn(1, 3, 96, 128)
    text_embeds = torch.randn(6, 32)
    half = make_model(clip).to(device=device, dtype=dtype)
    with torch.no_grad():
        reference = model(pixel_values=image, text_embeds=text_embeds).logits
        logits = half(pixel_values=image, text_embeds=text_embeds).logits.cpu()
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert (logits - reference).abs().mean() < 0.05
    assert (logits.argmax(1) == reference.argmax(1)).float().mean() > 0.8


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_keeps_distances_similarities_and_logits_float32(clip, model, device):
    torch.manual_seed(19)
    tokens = 100 + 30 * torch.randn(2, 16, 128, device=device)  # large norms, as CLIP's hidden states have
    with torch.autocast(device, dtype=torch.bfloat16):
        under_autocast = (pairwise_squared_distances(tokens), cosine_similarity_matrix(tokens))
    for value, expected in zip(under_autocast, (pairwise_squared_distances(tokens), cosine_similarity_matrix(tokens))):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, expected)
    image, text_embeds = torch.randn(1, 3, 96, 128), torch.randn(6, 32)
    with torch.no_grad():
        reference = model(pixel_values=image, text_embeds=text_embeds).logits
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = on_device(model, device)(pixel_values=image, text_embeds=text_embeds).logits.cpu()
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert (logits - reference).abs().mean() < 0.05
    assert (logits.argmax(1) == reference.argmax(1)).float().mean() > 0.8


# ----------------------------------------------------------------------------------------------------------------
# Weights, saving and loading
# ----------------------------------------------------------------------------------------------------------------


def test_from_clip_reproduces_clip_hidden_states_exactly(clip, model):
    torch.manual_seed(18)
    window = torch.randn(2, 3, 64, 64)
    captured = []
    hooks = [
        layer.register_forward_hook(lambda _, __, out: captured.append(out)) for layer in model.encoder.layers[:-1]
    ]
    with torch.no_grad():
        model.get_dense_image_features(window)
        expected = clip.vision_model(window, output_hidden_states=True).hidden_states[1:12]
    for hook in hooks:
        hook.remove()
    assert len(captured) == 11
    for ours, theirs in zip(captured, expected):
        assert torch.equal(ours, theirs)


def test_from_clip_copies_every_weight(clip, model):
    ours = model.state_dict()
    for name, tensor in clip.state_dict().items():
        if name == "logit_scale":  # CLIP's training temperature: the protocol sets its own logit scale
            continue
        assert torch.equal(ours[name.removeprefix("vision_model.")], tensor), name
    assert model.config.pre_adjust_layer == 9 and model.config.cls_residual_weight == 0.3


def test_from_clip_rejects_unknown_fields(clip):
    with pytest.raises(ValueError, match="not_a_field"):
        make_model(clip, not_a_field=1)


def test_save_and_load_round_trip(tmp_path, model):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config_json = (tmp_path / "config.json").read_text()
    assert '"AutoModel": "modeling_scclip.SCCLIPForSemanticSegmentation"' in config_json
    assert '"AutoConfig": "configuration_scclip.SCCLIPConfig"' in config_json
    assert (tmp_path / "modeling_scclip.py").exists() and (tmp_path / "configuration_scclip.py").exists()
    image, text_embeds = torch.randn(1, 3, 80, 100), torch.randn(3, 32)
    with torch.no_grad():
        expected = model(pixel_values=image, text_embeds=text_embeds).logits
        for loaded in (SCCLIPForSemanticSegmentation.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
            assert isinstance(loaded, SCCLIPForSemanticSegmentation)
            assert torch.equal(loaded(pixel_values=image, text_embeds=text_embeds).logits, expected)
    loaded_config = AutoConfig.from_pretrained(tmp_path).to_dict()
    expected_config = model.config.to_dict()
    assert loaded_config.pop("_name_or_path") == str(tmp_path)
    expected_config.pop("_name_or_path")
    assert loaded_config == expected_config


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


def test_presets_by_depth():
    b16 = SCCLIPConfig(patch_size=16)
    assert (b16.pre_adjust_layer, b16.post_adjust_layer, b16.fusion_start_layer, b16.fusion_end_layer) == (9, 4, 4, 10)
    l14 = SCCLIPConfig(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, patch_size=14)
    assert (l14.pre_adjust_layer, l14.post_adjust_layer, l14.fusion_start_layer, l14.fusion_end_layer) == (
        17,
        7,
        9,
        19,
    )
    assert l14.cls_residual_weight == 0.1
    six = SCCLIPConfig(num_hidden_layers=6, patch_size=16)  # B/16 indices scaled by 6/12
    assert (six.pre_adjust_layer, six.post_adjust_layer, six.fusion_start_layer, six.fusion_end_layer) == (4, 2, 2, 5)
    explicit = SCCLIPConfig(patch_size=16, pre_adjust_layer=7)
    assert explicit.pre_adjust_layer == 7 and explicit.post_adjust_layer == 4


@pytest.mark.parametrize(
    "field, value",
    [
        ("pre_adjust_layer", 12),
        ("post_adjust_layer", 0),
        ("fusion_end_layer", 12),
        ("lof_contamination", 0.6),
        ("lof_contamination", 0.0),
        ("lof_n_neighbors", 196),
        ("slide_stride", 0),
        ("window_batch_size", 0),
        ("similarity_threshold", 1.5),
        ("attention_temperature", 0.0),
    ],
)
def test_invalid_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SCCLIPConfig(patch_size=16, **{field: value})


def test_config_overrides_after_the_config_check_are_checked(model, tmp_path):
    model.save_pretrained(tmp_path)
    # from_pretrained sets its keyword overrides on the loaded config after the config's own check.
    with pytest.raises(ValueError, match="slide_stride"):
        SCCLIPForSemanticSegmentation.from_pretrained(tmp_path, slide_stride=1000)
    loaded = SCCLIPForSemanticSegmentation.from_pretrained(tmp_path)
    loaded.config.fusion_start_layer = 0
    with pytest.raises(ValueError, match="fusion_start_layer"):
        loaded(pixel_values=torch.randn(1, 3, 64, 64), text_embeds=torch.randn(2, 32))


def test_fusion_range_must_be_ordered():
    with pytest.raises(ValueError, match="fusion_start_layer"):
        SCCLIPConfig(patch_size=16, fusion_start_layer=8, fusion_end_layer=5)


def test_config_round_trip(tmp_path):
    config = tiny_scclip_config(use_feature_aggregation=False, anomaly_detector="standard_lof")
    config.save_pretrained(tmp_path)
    loaded = SCCLIPConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.text_config.hidden_size == 64 and loaded.use_feature_aggregation is False


# ----------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.randn(3, 64, 64), "must be a \\(batch_size, 3, height, width\\) tensor"),
        (torch.randn(1, 4, 64, 64), "must be a \\(3, height, width\\) tensor"),
        (torch.randn(1, 3, 4, 64), "smaller than one 8x8 patch"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN or infinite"),
        (torch.full((1, 3, 64, 64), float("inf")), "NaN or infinite"),
        ([], "no image"),
        (torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8), "dtype torch.uint8"),
        ([torch.randn(3, 64, 64), torch.zeros(3, 64, 64, dtype=torch.int64)], "Image 1 has dtype torch.int64"),
        (Image.new("RGB", (64, 64)), "got Image. Use SCCLIPImageProcessor"),
    ],
)
def test_bad_pixel_values(model, pixel_values, message):
    with pytest.raises(ValueError, match=message):
        model(pixel_values=pixel_values, text_embeds=torch.randn(2, 32))


def test_bad_text_inputs(model):
    image = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="\\(num_queries, 32\\)"):
        model(pixel_values=image, text_embeds=torch.randn(2, 16))
    with pytest.raises(ValueError, match="No text queries"):
        model(pixel_values=image, text_embeds=torch.randn(0, 32))
    with pytest.raises(ValueError, match="exactly one of"):
        model(pixel_values=image)


def test_dense_features_need_patch_multiples(model):
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        model.get_dense_image_features(torch.randn(1, 3, 60, 64))

# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""PyTorch SC-CLIP: Self-Calibrated CLIP for training-free open-vocabulary semantic segmentation (Bai et al.)."""

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from transformers import CLIPModel, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel
from transformers.activations import QuickGELUActivation
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPEncoder, CLIPEncoderLayer, CLIPVisionEmbeddings
from transformers.utils import ModelOutput

from .configuration_scclip import SCCLIPConfig, scclip_preset


# Added to the denominators of the aggregation operator and of textbook LOF, as in the reference implementations.
AGGREGATION_EPS = 1e-6
LOF_EPS = 1e-10
# The hint that ends every error about malformed pixel_values.
USE_THE_IMAGE_PROCESSOR = "Use SCCLIPImageProcessor to turn images into pixel values."


@dataclass
class SCCLIPSemanticSegmenterOutput(ModelOutput):
    """
    Output of [`SCCLIPForSemanticSegmentation`].

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_queries, height, width)`, or a list of
            `(num_queries, height_i, width_i)` tensors when the images were given as a list):
            Cosine similarities between every pixel's dense feature and every text query, at the resolution of the
            input `pixel_values` (float32 whatever the model's dtype). Use
            `SCCLIPProcessor.post_process_semantic_segmentation` to turn them into label maps at the original size.
    """

    logits: torch.FloatTensor | list[torch.FloatTensor] | None = None


def full_precision(tensor: torch.Tensor):
    """Autocast off for `tensor`'s device: the block's float32 products stay float32 under mixed precision."""
    return torch.autocast(tensor.device.type, enabled=False)


def pairwise_squared_distances(tokens: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances `(B, N, N)` between the rows of `tokens` `(B, N, D)`, from a Gram matrix."""
    # Centring leaves distances unchanged and keeps the Gram expansion precise for CLIP's large-norm tokens; a
    # half-precision Gram matrix would not be (catastrophic cancellation), hence float32 also under autocast.
    with full_precision(tokens):
        tokens = tokens.float()
        tokens = tokens - tokens.mean(dim=1, keepdim=True)
        squared_norms = tokens.square().sum(dim=-1)
        gram = tokens @ tokens.transpose(1, 2)
        return (squared_norms[:, :, None] + squared_norms[:, None, :] - 2 * gram).clamp_min_(0)


def nearest_neighbors(distances: torch.Tensor, n_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `n_neighbors` nearest *other* tokens of every token: distances and indices `(B, N, k)`, nearest first."""
    distances = distances.clone()
    distances.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    return distances.topk(n_neighbors, dim=-1, largest=False)


def released_lof_scores(tokens: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """
    LOF scores `(B, N)` of the authors' released variant: squared Euclidean distances, and a reach distance of
    max(d(p, o), kdist(p)) = kdist(p), so LRD(p) = k / kdist(p) and LOF(p) = mean_o LRD(o) / LRD(p).
    """
    knn_distances, knn_indices = nearest_neighbors(pairwise_squared_distances(tokens), n_neighbors)
    local_reachability = n_neighbors / knn_distances[..., -1].clamp_min(LOF_EPS)
    return _mean_neighbor_ratio(local_reachability, knn_indices)


def standard_lof_scores(tokens: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """
    Textbook LOF scores `(B, N)` (Breunig et al. 2000; scikit-learn's `-negative_outlier_factor_`): Euclidean
    distances and reach-dist(p, o) = max(d(p, o), kdist(o)).
    """
    knn_distances, knn_indices = nearest_neighbors(pairwise_squared_distances(tokens).sqrt(), n_neighbors)
    neighbor_kdist = torch.gather(knn_distances[..., -1].unsqueeze(1).expand(-1, tokens.shape[1], -1), 2, knn_indices)
    reach_distances = torch.maximum(knn_distances, neighbor_kdist)
    local_reachability = 1.0 / (reach_distances.mean(dim=-1) + LOF_EPS)
    return _mean_neighbor_ratio(local_reachability, knn_indices)


def _mean_neighbor_ratio(local_reachability: torch.Tensor, knn_indices: torch.Tensor) -> torch.Tensor:
    batch_size, num_tokens, n_neighbors = knn_indices.shape
    neighbor_lrd = torch.gather(local_reachability, 1, knn_indices.reshape(batch_size, -1))
    return neighbor_lrd.reshape(batch_size, num_tokens, n_neighbors).mean(dim=-1) / local_reachability


def select_anomalies(scores: torch.Tensor, contamination: float) -> torch.Tensor:
    """Boolean mask `(B, N)` of the tokens scoring strictly above their image's (1 - contamination) quantile."""
    threshold = torch.quantile(scores.float(), 1 - contamination, dim=-1, keepdim=True)
    return scores > threshold


def resolve_anomalies(tokens: torch.Tensor, anomalies: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """
    Replace every anomaly token of `tokens` `(B, N, D)` by the mean of its 3x3 grid neighbours that are inside the
    grid and not anomalies; a token without such a neighbour keeps its value.
    """
    batch_size, _, dim = tokens.shape
    height, width = grid
    # A (B, D, H, W) view in channels-last memory: no copy, and the result is (B, N, D) again without one.
    feature_map = tokens.reshape(batch_size, height, width, dim).permute(0, 3, 1, 2)
    valid = (~anomalies).to(tokens.dtype).reshape(batch_size, 1, height, width)
    # 3x3 sums with zero padding, minus the centre: the sum and count of each token's valid neighbours. In place
    # where possible: with several layers side by side the feature maps are the largest tensors of this step.
    neighbor_mean = F.avg_pool2d(feature_map * valid, 3, stride=1, padding=1, divisor_override=1)
    neighbor_mean.addcmul_(feature_map, valid, value=-1)
    neighbor_count = F.avg_pool2d(valid, 3, stride=1, padding=1, divisor_override=1) - valid
    neighbor_mean /= neighbor_count.clamp_min(1)
    replace = (valid == 0) & (neighbor_count > 0)
    resolved = torch.where(replace, neighbor_mean, feature_map)
    return resolved.permute(0, 2, 3, 1).reshape(batch_size, height * width, dim)


def cosine_similarity_matrix(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarities `(B, N, N)` between the rows of `tokens` `(B, N, D)`, in float32 (also under autocast)."""
    with full_precision(tokens):
        tokens = F.normalize(tokens.float(), dim=-1)
        return tokens @ tokens.transpose(1, 2)


def aggregation_operator(similarity: torch.Tensor, threshold: float) -> torch.Tensor:
    """A(S): similarities below `threshold` set to 0, each row divided by (its sum + 1e-6)."""
    similarity = similarity.masked_fill(similarity < threshold, 0.0)
    return similarity / (similarity.sum(dim=-1, keepdim=True) + AGGREGATION_EPS)


def similarity_attention(similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """
    softmax(M) with M = temperature * (S - mean(S)) and negative entries set to -inf; the mean is over all N^2
    entries of each image's S.
    """
    logits = temperature * (similarity - similarity.mean(dim=(1, 2), keepdim=True))
    negative = logits < 0
    # A token's similarity to itself is the row's maximum, so its entry is never negative in exact arithmetic;
    # keeping it guards against a fully masked (NaN) row from rounding on near-constant images.
    negative.diagonal(dim1=1, dim2=2).fill_(False)
    return logits.masked_fill(negative, float("-inf")).softmax(dim=-1)


class InPlaceQuickGELU(nn.Module):
    """
    CLIP's QuickGELU, x * sigmoid(1.702 * x), with the same values, written into its input when no gradient is
    recorded. The MLP's hidden activation is the largest tensor of a batch of windows: one temporary of its size
    instead of two saves memory traffic and, on CPU, the page faults of a fresh buffer (10% of ViT-L/14's encoder
    time with 8 windows per pass).
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = torch.mul(hidden_states, 1.702).sigmoid_()
        if torch.is_grad_enabled() and hidden_states.requires_grad:
            return hidden_states * gate
        return hidden_states.mul_(gate)


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the sliding windows along one axis (MMSegmentation's slide inference)."""
    num_windows = max(length - crop + stride - 1, 0) // stride + 1
    return [max(min(index * stride, length - crop), 0) for index in range(num_windows)]


class SCCLIPSelfCalibratedLayer(CLIPEncoderLayer):
    """
    CLIP's final encoder layer with SC-CLIP's self-calibrated attention. It keeps every weight of the CLIP layer, so
    its `forward` is still the unmodified CLIP layer (the plain-CLIP baseline); SC-CLIP calls
    `self_calibrated_attention` instead, which uses only the first LayerNorm and the k/v/out projections.
    """

    def self_calibrated_attention(
        self, hidden_states: torch.Tensor, enhancement: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Attention of the patch tokens `(B, N, D)` with weights W = softmax(K Kᵀ / sqrt(d_head)), averaged with the
        head-independent `enhancement` weights `(B, N, N)` when given; no residual connection and no MLP.
        """
        attention = self.self_attn
        batch_size, num_tokens, embed_dim = hidden_states.shape
        hidden_states = self.layer_norm1(hidden_states)
        values = attention.v_proj(hidden_states)
        heads_shape = (batch_size, num_tokens, attention.num_heads, attention.head_dim)
        keys = attention.k_proj(hidden_states).view(heads_shape).transpose(1, 2)
        per_head_values = values.view(heads_shape).transpose(1, 2)
        output = F.scaled_dot_product_attention(keys, keys, per_head_values, scale=attention.scale)
        output = output.transpose(1, 2).reshape(batch_size, num_tokens, embed_dim)
        if enhancement is not None:
            # The enhancement is shared by all heads, so one matmul with the unsplit values serves them all.
            output = 0.5 * (output + enhancement.to(values.dtype) @ values)
        return attention.out_proj(output)


class SCCLIPForSemanticSegmentation(CLIPVisionModel):
    """
    SC-CLIP: a CLIP vision tower whose layers 1..L-1 are unchanged and whose final layer is replaced by the
    self-calibrated computation (anomaly resolution, self-adjusting aggregation, similarity-enhanced attention and
    multi-level fusion), giving dense, text-aligned features without any training. The CLIP text tower and both
    projections are part of the model, so one checkpoint answers any list of text labels.

    Example:

    ```python
    >>> from modeling_scclip import SCCLIPForSemanticSegmentation, SCCLIPProcessor

    >>> # A folder written by scripts/convert_clip_to_scclip.py (or an SC-CLIP repo on the Hub)
    >>> model = SCCLIPForSemanticSegmentation.from_pretrained("scclip-vit-b16")
    >>> processor = SCCLIPProcessor.from_pretrained("scclip-vit-b16")
    >>> inputs = processor(images=image, return_tensors="pt")
    >>> labels = processor.encode_labels(model, ["cat", "dog", "grass"])
    >>> outputs = model(pixel_values=inputs.pixel_values, text_embeds=labels.text_embeds)
    >>> label_map = processor.post_process_semantic_segmentation(
    ...     outputs, target_sizes=inputs.original_sizes, query_to_class=labels.query_to_class
    ... )[0]
    ```
    """

    config: SCCLIPConfig
    config_class = SCCLIPConfig
    input_modalities = ("image", "text")

    def __init__(self, config: SCCLIPConfig):
        # Skip CLIPVisionModel.__init__: its encoder would be built with a plain last layer and initialised twice.
        super(CLIPVisionModel, self).__init__(config)
        # `from_pretrained(..., slide_stride=...)` sets its overrides after the config's own check: check them here.
        config.check_scclip_values()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.encoder.layers[-1] = SCCLIPSelfCalibratedLayer(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        for module in self.modules():
            if isinstance(module, CLIPMLP) and isinstance(module.activation_fn, QuickGELUActivation):
                module.activation_fn = InPlaceQuickGELU()
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            factor = self.config.initializer_factor
            nn.init.normal_(self.visual_projection.weight, std=self.config.hidden_size**-0.5 * factor)
            nn.init.normal_(self.text_projection.weight, std=self.config.text_config.hidden_size**-0.5 * factor)

    @classmethod
    def from_clip(
        cls, clip: "CLIPModel | str | os.PathLike", preset: str = "auto", **config_overrides
    ) -> "SCCLIPForSemanticSegmentation":
        """
        Build SC-CLIP from a CLIP checkpoint, copying every weight (vision and text towers, both projections).

        Args:
            clip (`CLIPModel`, `str` or `os.PathLike`):
                A loaded `CLIPModel`, or a Hub id / local folder that `CLIPModel.from_pretrained` accepts.
            preset (`str`, *optional*, defaults to `"auto"`):
                SC-CLIP's layer preset: `"auto"` (from the vision depth), `"vit-b16"` or `"vit-l14"`.
            config_overrides:
                Any [`SCCLIPConfig`] field, e.g. `use_attention_enhancement=False` or `slide_stride=224`.
        """
        if isinstance(clip, (str, os.PathLike)):
            clip = CLIPModel.from_pretrained(clip)
        if not isinstance(clip, CLIPModel):
            raise TypeError(f"from_clip expects a CLIPModel or a checkpoint name/path, got {type(clip).__name__}.")
        vision_config = clip.config.vision_config
        vision_fields = {name: getattr(vision_config, name) for name in CLIPVisionConfig.__annotations__}
        unknown = set(config_overrides) - set(SCCLIPConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown SCCLIPConfig field(s) {sorted(unknown)} passed to from_clip.")
        config = SCCLIPConfig(
            **{
                **vision_fields,
                **scclip_preset(vision_config.num_hidden_layers, preset),
                "text_config": clip.config.text_config.to_dict(),
                "projection_dim": clip.config.projection_dim,
                **config_overrides,
            }
        )
        model = cls(config).to(clip.dtype)
        model.load_state_dict(_scclip_state_dict_from_clip(clip.state_dict()))
        return model.eval()

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected (not normalised) text embeddings `(num_texts, projection_dim)` of tokenized texts."""
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.text_projection(pooled)

    def get_dense_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        SC-CLIP's dense features of one window per image (no sliding): projected, not normalised.

        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images whose height and width are multiples of the patch size. Position embeddings are
                interpolated (bicubic) when the patch grid differs from pretraining. Images are independent.

        Returns:
            `torch.Tensor` of shape `(batch_size, projection_dim, height // patch_size, width // patch_size)`.
        """
        grid = self._check_window_pixels(pixel_values)
        config = self.config
        patches, cls_token, fused, enhancement, post_aggregation = self._final_layer_inputs(pixel_values, grid)
        final_layer = self.encoder.layers[-1]
        weight = config.cls_residual_weight
        with record_function("scclip/final_attention"):
            features = final_layer.self_calibrated_attention(patches, enhancement) + weight * cls_token
        if config.use_multi_level_fusion:
            with record_function("scclip/fusion"):
                features_fused = final_layer.self_calibrated_attention(fused[:, 1:], enhancement)
                features = _sum_aggregated(features, features_fused + weight * fused[:, :1], post_aggregation)
        elif post_aggregation is not None:
            features = post_aggregation @ features
        return self._project_to_feature_map(features, grid)

    def _final_layer_inputs(self, pixel_values: torch.Tensor, grid: tuple[int, int]) -> tuple:
        """
        Layers 1..L-1, anomaly resolution and the similarity matrices: the patch tokens and CLS token of the final
        attention, the fusion layers' sum, the enhancement weights and the post-attention aggregation. The kept
        hidden states are freed when this returns, before the final attention.
        """
        config = self.config
        with record_function("scclip/encoder"):
            kept, fused = self._encode_until_last_layer(pixel_values)
        last = kept[config.num_hidden_layers - 1]
        # A copy: a view of the CLS token would keep the whole layer alive.
        patches, cls_token = last[:, 1:], last[:, :1].clone()
        pre_patches = kept[config.pre_adjust_layer][:, 1:]
        if config.use_anomaly_resolution:
            with record_function("scclip/lof"):
                anomalies = self.find_anomaly_tokens(patches)
            with record_function("scclip/resolution"):
                # Both layers share the anomaly mask: resolve them side by side in one pass.
                resolved = resolve_anomalies(torch.cat([patches, pre_patches], dim=-1), anomalies, grid)
                patches, pre_patches = resolved.split(patches.shape[-1], dim=-1)
        with record_function("scclip/similarity_aggregation"):
            pre_similarity = cosine_similarity_matrix(pre_patches)
            enhancement = (
                similarity_attention(pre_similarity, config.attention_temperature)
                if config.use_attention_enhancement
                else None
            )
            post_aggregation = None
            if config.use_feature_aggregation:
                threshold = config.similarity_threshold
                post_similarity = cosine_similarity_matrix(kept[config.post_adjust_layer][:, 1:])
                post_aggregation = aggregation_operator(post_similarity, threshold).to(patches.dtype)
                patches = aggregation_operator(pre_similarity, threshold).to(patches.dtype) @ patches
        return patches, cls_token, fused, enhancement, post_aggregation

    def get_plain_clip_dense_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Plain CLIP's dense features (the baseline SC-CLIP improves on): patch tokens of the unmodified last layer,
        post-LayerNorm and projected. Same input and output as [`get_dense_image_features`].
        """
        grid = self._check_window_pixels(pixel_values)
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding=True))
        for layer in self.encoder.layers:
            hidden_states = layer(hidden_states, None)
        return self._project_to_feature_map(hidden_states[:, 1:], grid)

    def find_anomaly_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """Boolean mask `(B, N)` of the anomaly tokens among the patch tokens `(B, N, D)`, per image."""
        num_tokens = patches.shape[1]
        n_neighbors = min(self.config.lof_n_neighbors, num_tokens - 1)
        if n_neighbors < 1:
            return torch.zeros(patches.shape[:2], dtype=torch.bool, device=patches.device)
        if self.config.anomaly_detector == "lof":
            scores = released_lof_scores(patches, n_neighbors)
        elif self.config.anomaly_detector == "standard_lof":
            scores = standard_lof_scores(patches, n_neighbors)
        else:
            scores = patches.float().norm(dim=-1)
        return select_anomalies(scores, self.config.lof_contamination)

    def forward(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        text_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> SCCLIPSemanticSegmenterOutput:
        r"""
        Segment images against text queries by SC-CLIP's sliding-window inference.

        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`, or a list of
                `(num_channels, height_i, width_i)` tensors for images of different sizes):
                Normalised images (see `SCCLIPImageProcessor`). Any size of at least one patch: windows of
                `config.slide_crop_size` pixels slide with `config.slide_stride`, and all windows of all images go
                through the encoder together, `config.window_batch_size` at a time. Moved to the model's device and
                dtype here.
            text_embeds (`torch.Tensor` of shape `(num_queries, projection_dim)`, *optional*):
                One embedding per query, e.g. `SCCLIPProcessor.encode_labels(...).text_embeds`; normalised here.
            input_ids (`torch.Tensor` of shape `(num_queries, sequence_length)`, *optional*):
                Tokenized queries, encoded with [`get_text_features`], when `text_embeds` is not given.
            attention_mask (`torch.Tensor`, *optional*):
                Attention mask of `input_ids`.
        """
        if (text_embeds is None) == (input_ids is None):
            raise ValueError(
                "Pass exactly one of `text_embeds` (query embeddings) or `input_ids` (tokenized queries)."
            )
        if text_embeds is None:
            text_embeds = self.get_text_features(input_ids, attention_mask)
        logits = self.slide_inference(pixel_values, text_embeds)
        return SCCLIPSemanticSegmenterOutput(logits=logits)

    def slide_inference(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        text_embeds: torch.Tensor,
        dense_features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """
        Cosine-similarity logits at the input resolution by sliding windows (spec "Whole image"). `dense_features`
        maps windows to feature maps and defaults to [`get_dense_image_features`]; passing
        [`get_plain_clip_dense_features`] gives the plain-CLIP baseline on exactly the same windows.
        """
        # Again per call: `model.config.slide_stride = ...` after loading bypasses every earlier check.
        self.config.check_scclip_values()
        images = self._check_images(pixel_values)
        queries = self._check_text_embeds(text_embeds)
        dense_features = dense_features or self.get_dense_image_features
        sizes = [tuple(image.shape[-2:]) for image in images]
        offsets = torch.tensor([0] + [height * width for height, width in sizes]).cumsum(0).tolist()
        # All images side by side as one flat pixel row: windows are gathered from it and their logits added back
        # into a flat canvas with index operations, never one window at a time.
        flat_pixels = torch.cat([image.reshape(image.shape[0], -1) for image in images], dim=1)
        flat_pixels = flat_pixels.to(device=self.device, dtype=self.dtype)
        canvas = queries.new_zeros(queries.shape[0], offsets[-1])
        counts = queries.new_zeros(offsets[-1])
        crop, stride, patch = self.config.slide_crop_size, self.config.slide_stride, self.config.patch_size
        for (height, width), windows in self._windows_by_size(sizes, crop, stride).items():
            # The patch embedding ignores a remainder smaller than a patch, as CLIP's strided convolution does.
            feature_height, feature_width = height - height % patch, width - width % patch
            # One small host-to-device copy per window size; the pixel indices are then built on the device, so the
            # host never waits for the GPU between chunks.
            origins, image_widths = _window_origins(windows, offsets, sizes).to(self.device)
            batch_size = self.config.window_batch_size
            for origin, image_width in zip(origins.split(batch_size), image_widths.split(batch_size)):
                crop_index = _window_pixel_indices(origin, image_width, feature_height, feature_width)
                crops = flat_pixels[:, crop_index].view(-1, len(origin), feature_height, feature_width)
                features = F.normalize(dense_features(crops.transpose(0, 1)).float(), dim=1)
                # The logits and their float32 canvas stay float32 under autocast too.
                with record_function("scclip/upsample_canvas"), full_precision(features):
                    window_logits = torch.einsum("bdhw,qd->qbhw", features, queries)
                    window_logits = F.interpolate(
                        window_logits, size=(height, width), mode="bilinear", align_corners=False
                    )
                    pixel_index = _window_pixel_indices(origin, image_width, height, width)
                    canvas.index_add_(1, pixel_index, window_logits.reshape(queries.shape[0], -1))
                    counts.index_add_(0, pixel_index, torch.ones_like(pixel_index, dtype=counts.dtype))
        logits = [
            (canvas[:, start:end] / counts[start:end]).reshape(-1, *size)
            for start, end, size in zip(offsets[:-1], offsets[1:], sizes)
        ]
        return torch.stack(logits) if isinstance(pixel_values, torch.Tensor) else logits

    def _encode_until_last_layer(
        self, pixel_values: torch.Tensor
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Run layers 1..L-1, keeping only the layers SC-CLIP reads and the running sum of the fusion layers."""
        config = self.config
        keep = {config.pre_adjust_layer, config.post_adjust_layer, config.num_hidden_layers - 1}
        fusion_layers = range(config.fusion_start_layer, config.fusion_end_layer + 1)
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding=True))
        kept, fused = {}, None
        for index, layer in enumerate(self.encoder.layers[:-1], start=1):
            hidden_states = layer(hidden_states, None)
            if index in keep:
                kept[index] = hidden_states
            if config.use_multi_level_fusion and index in fusion_layers:
                fused = hidden_states if fused is None else fused + hidden_states
        return kept, fused

    def _project_to_feature_map(self, patch_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        features = self.visual_projection(self.post_layernorm(patch_tokens))
        return features.transpose(1, 2).reshape(features.shape[0], -1, *grid)

    @staticmethod
    def _windows_by_size(sizes: list[tuple[int, int]], crop: int, stride: int) -> dict:
        """(image index, top, left) of every window of every image, grouped by window size so groups batch."""
        groups = defaultdict(list)
        for index, (height, width) in enumerate(sizes):
            for top in window_starts(height, crop, stride):
                for left in window_starts(width, crop, stride):
                    groups[(min(crop, height), min(crop, width))].append((index, top, left))
        return groups

    def _check_window_pixels(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        patch = self.config.patch_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch_size, {self.config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[-2:]
        if height % patch or width % patch or height == 0 or width == 0:
            raise ValueError(
                f"Window size {height}x{width} is not a positive multiple of the patch size {patch}: crop it, or "
                "call the model itself, which slides windows over images of any size."
            )
        return height // patch, width // patch

    def _check_images(self, pixel_values: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        channels, patch = self.config.num_channels, self.config.patch_size
        got = None
        if isinstance(pixel_values, torch.Tensor) and pixel_values.ndim != 4:
            got = f"a tensor of shape {tuple(pixel_values.shape)}"
        elif not isinstance(pixel_values, (torch.Tensor, list, tuple)):
            got = type(pixel_values).__name__
        if got is not None:
            raise ValueError(
                f"pixel_values must be a (batch_size, {channels}, height, width) tensor or a list of "
                f"({channels}, height, width) tensors, got {got}. {USE_THE_IMAGE_PROCESSOR}"
            )
        images = list(pixel_values)
        if not images:
            raise ValueError("pixel_values holds no image.")
        for index, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != channels:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(
                    f"Image {index} must be a ({channels}, height, width) tensor, got {shape}. {USE_THE_IMAGE_PROCESSOR}"
                )
            if not image.is_floating_point():
                raise ValueError(
                    f"Image {index} has dtype {image.dtype}: pixel_values must be normalised floating-point values. "
                    f"{USE_THE_IMAGE_PROCESSOR}"
                )
            if min(image.shape[-2:]) < patch:
                raise ValueError(
                    f"Image {index} is {image.shape[-2]}x{image.shape[-1]} pixels, smaller than one {patch}x{patch} "
                    "patch: SC-CLIP needs at least one patch per side."
                )
        # One check for all images: each `.all()` read on the host would wait for the device.
        finite = torch.stack([torch.isfinite(image).all() for image in images]).tolist()
        if not all(finite):
            raise ValueError(f"Image {finite.index(False)} contains NaN or infinite pixel values.")
        return images

    def _check_text_embeds(self, text_embeds: torch.Tensor) -> torch.Tensor:
        if text_embeds.ndim != 2 or text_embeds.shape[-1] != self.config.projection_dim:
            raise ValueError(
                f"text_embeds must have shape (num_queries, {self.config.projection_dim}) for this model, "
                f"got {tuple(text_embeds.shape)}."
            )
        if text_embeds.shape[0] == 0:
            raise ValueError("No text queries: pass at least one label.")
        return F.normalize(text_embeds.float(), dim=-1).to(self.device)


def _sum_aggregated(features: torch.Tensor, fused: torch.Tensor, aggregation: torch.Tensor | None) -> torch.Tensor:
    """A·Y + A·Y_f, computed as A·(Y + Y_f) since the aggregation is linear."""
    total = features + fused
    return total if aggregation is None else aggregation @ total


def _window_origins(windows: list[tuple[int, int, int]], offsets: list[int], sizes: list[tuple[int, int]]):
    """`(2, n)`: the flat canvas index of every window's top-left pixel, and the width of the window's image."""
    return torch.tensor(
        [[offsets[image] + top * sizes[image][1] + left for image, top, left in windows]]
        + [[sizes[image][1] for image, _, _ in windows]]
    )


def _window_pixel_indices(origins: torch.Tensor, image_widths: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flat canvas index of every pixel of `height` x `width` windows at `origins` `(n,)`, window-major."""
    rows = torch.arange(height, device=origins.device)[None, :, None] * image_widths[:, None, None]
    columns = torch.arange(width, device=origins.device)
    return (origins[:, None, None] + rows + columns).reshape(-1)


def _scclip_state_dict_from_clip(clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a CLIPModel state dict onto SC-CLIP's parameter names (the vision tower sits at the top level)."""
    state = {}
    for name, tensor in clip_state.items():
        if name.startswith("vision_model."):
            state[name.removeprefix("vision_model.")] = tensor
        elif name != "logit_scale":
            state[name] = tensor
    return state


SCCLIPConfig.register_for_auto_class()
SCCLIPForSemanticSegmentation.register_for_auto_class("AutoModel")

__all__ = ["SCCLIPForSemanticSegmentation", "SCCLIPSemanticSegmenterOutput", "SCCLIPSelfCalibratedLayer"]

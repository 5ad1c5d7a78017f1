"""Few-shot methods compared by the benchmark, behind one interface.

Every method turns an episode's support set (and class texts) into a predictor of query logits:
``predictor = method.adapt(episode)``, then ``logits = predictor(query_uint8)``. All of them stand on
the *same* body, the synthesizer's own (by default the frozen ImageNet EfficientNet-Lite0 at 128 px),
with the same image normalisation, and none of them ever sees the query labels.

* :class:`SGPSMethod`: the synthesizer (image + text, image only, or text only).
* :class:`ProtoNetMethod`: squared-euclidean nearest prototype (the ProtoNet rule, Snell et al. 2017).
* :class:`NearestNeighbourMethod`: 1-nearest support image in the body's feature space.
* :class:`LinearProbeMethod`: logistic regression on the frozen body features (head-only fine-tuning).
* :class:`FineTuneMethod`: the body (all layers, or its top stages) fine-tuned for a fixed step budget after
  a linear-probe head initialisation (LP-FT, Kumar et al. 2022: it beats fine-tuning from a random head).

The frozen body's features are memoised per image (:class:`FeatureMemo`), so methods that share the body
pay for each image once. BatchNorm stays in eval mode (running statistics) in every gradient-based method:
with 5-25 support images, batch statistics are too noisy to train on and would make predictions depend on
the query batch.

With ``views`` (a :class:`~sgps_hf.evaluation.views.TaskEmbedding`), ProtoNet, nearest neighbour and the linear probe
see each support image under the SGPS support views and embed support and queries under the task-adapted BatchNorm
statistics SGPS uses; fine-tuning draws each step's support from those views (``support_views``) and can start from
the task-adapted statistics (``task_batchnorm_images``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from ..body.timm_network import task_batchnorm
from ..data.episodes import Episode
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from ..models.sgps.views import apply_view
from ..training.augment import episode_seed, random_flips

if TYPE_CHECKING:
    from .views import TaskEmbedding

Predictor = Callable[[Tensor], Tensor]  # uint8 query images [n, 3, H, W] -> logits [n, num_classes]


class FewShotMethod(Protocol):
    """A method the benchmark can run: ``adapt`` an episode's support set into a query predictor."""

    name: str
    needs_images: bool  # False only for text-only synthesis (the 0-shot setting)

    def adapt(self, episode: Episode) -> Predictor: ...

    def describe(self) -> dict[str, Any]: ...


def _eval_features(body: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Pooled body features in eval mode, batched so that large query sets do not blow up memory."""
    body.eval()
    return torch.cat([body(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


class FeatureMemo(nn.Module):
    """A frozen module (eval mode) whose output for each image is computed once and then looked up.

    Images are keyed by their bytes, so the same support or query image met by several methods, or again in
    a later episode, costs one forward pass. The memo holds features, not images (a few KB per image).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.eval().requires_grad_(False)
        self._memo: dict[bytes, Tensor] = {}

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        keys = [hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest() for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self._memo]
        if missing:
            new = _eval_features(self.module, images[missing])
            self._memo.update({keys[i]: feature for i, feature in zip(missing, new, strict=False)})
        return torch.stack([self._memo[key] for key in keys])


@dataclass
class SGPSMethod:
    """The synthesizer: one forward pass writes the classifier's weights, which then classify the queries."""

    synthesizer: SGPSSynthesizer
    text_bank: Callable[[list[str]], Tensor]
    use_text: bool = True
    use_images: bool = True
    name: str = "SGPS (image + text)"
    features: "FeatureMemo | None" = field(default=None, repr=False)  # the shared body's memo (default: its own)

    def __post_init__(self) -> None:
        if not (self.use_text or self.use_images):
            raise ValueError("SGPS needs images, texts or both.")
        self.needs_images = self.use_images
        self.processor = SGPSImageProcessor.from_sgps_config(self.synthesizer.config)
        self.synthesizer.eval()
        if self.features is None:
            self.features = FeatureMemo(self.synthesizer.target)

    @torch.no_grad()
    def adapt(self, episode: Episode) -> Predictor:
        """Synthesize through the model's one inference path (``forward`` then ``query_logits``), exactly as
        :func:`sgps_hf.synthesis.synthesize` does for users; the memo only saves recomputing the unadapted body."""
        n = len(episode.class_names)
        output = self.synthesizer(
            num_classes=n,
            support_pixel_values=self.processor.normalize_uint8(episode.support) if self.use_images else None,
            support_labels=episode.support_labels if self.use_images else None,
            text_embeds=self.text_bank(episode.class_texts),
            text_mask=torch.full((n,), self.use_text),
            embed=self.features,
        )
        weights, synthesizer, normalize = output.weights, self.synthesizer, self.processor.normalize_uint8
        return torch.no_grad()(
            lambda images: synthesizer.query_logits(weights, normalize(images), embed=self.features)
        )

    def describe(self) -> dict[str, Any]:
        return {"support images": self.use_images, "class texts": self.use_text, "gradient steps": 0}


@dataclass
class ProtoNetMethod:
    """Prototypical network: logits are negative squared euclidean distances to the class means."""

    body: nn.Module
    processor: SGPSImageProcessor
    name: str = "ProtoNet"
    needs_images: bool = True
    views: "TaskEmbedding | None" = None  # SGPS's support views (averaged per image) and task BatchNorm

    @torch.no_grad()
    def adapt(self, episode: Episode) -> Predictor:
        features, embed = _support_and_embed(self.body, self.processor, self.views, episode.support)
        prototypes = _class_means(features.mean(1), episode.support_labels, len(episode.class_names))
        return torch.no_grad()(lambda images: -squared_distances(embed(images), prototypes))

    def describe(self) -> dict[str, Any]:
        return {"distance": "squared euclidean", **_views_facts(self.views, "averaged per image")}


@dataclass
class NearestNeighbourMethod:
    """1-nearest-neighbour: class score = similarity to the class's closest support image.

    ``metric`` is ``"cosine"`` (scores are cosine similarities times ``scale``) or ``"euclidean"``
    (negative distances); the argmax is the 1-NN decision either way, the scale only matters for
    probabilities (calibration, AUROC).
    """

    body: nn.Module
    processor: SGPSImageProcessor
    metric: str = "cosine"
    scale: float = 10.0
    name: str = "Nearest neighbour"
    needs_images: bool = True
    views: "TaskEmbedding | None" = None  # SGPS's support views (averaged per image) and task BatchNorm

    def _normalize(self, features: Tensor) -> Tensor:
        return nn.functional.normalize(features, dim=-1) if self.metric == "cosine" else features

    @torch.no_grad()
    def adapt(self, episode: Episode) -> Predictor:
        if self.metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be cosine or euclidean, got {self.metric!r}.")
        features, embed = _support_and_embed(self.body, self.processor, self.views, episode.support)
        support, labels, n = self._normalize(features.mean(1)), episode.support_labels, len(episode.class_names)

        @torch.no_grad()
        def predict(images: Tensor) -> Tensor:
            queries = self._normalize(embed(images))
            similarity = queries @ support.T if self.metric == "cosine" else -torch.cdist(queries, support)
            per_class = torch.full((len(queries), n), -torch.inf)
            per_class = per_class.scatter_reduce(1, labels.expand(len(queries), -1), similarity, reduce="amax")
            return self.scale * per_class

        return predict

    def describe(self) -> dict[str, Any]:
        return {"metric": self.metric, "k": 1, **_views_facts(self.views, "averaged per image")}


def _support_and_embed(
    body: nn.Module, processor: SGPSImageProcessor, views: "TaskEmbedding | None", support: Tensor
) -> tuple[Tensor, Predictor]:
    """(support features [S, V, D], query embedding): one view under the body's statistics, or ``views``'s own."""
    if views is not None:
        return views(support)
    features = _eval_features(body, processor.normalize_uint8(support)).unsqueeze(1)
    return features, lambda images: _eval_features(body, processor.normalize_uint8(images))


def _views_facts(views: "TaskEmbedding | None", how: str) -> dict[str, Any]:
    return {} if views is None else {**views.describe(), "views used": how}


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared euclidean distances, expanded (``cdist(...)**2`` has a NaN gradient at distance 0)."""
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)).clamp(min=0)


def _class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    sums = torch.zeros(num_classes, features.shape[1]).index_add(0, labels, features)
    return sums / torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1).to(features.dtype)


def fit_linear_head(
    features: Tensor, labels: Tensor, num_classes: int, steps: int, lr: float, weight_decay: float
) -> nn.Linear:
    """Multinomial logistic regression on fixed features (full-batch Adam from a zero head)."""
    head = nn.Linear(features.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(features), labels).backward()
        optimizer.step()
    return head.eval()


@dataclass
class LinearProbeMethod:
    """Head-only fine-tuning: logistic regression on the frozen body features."""

    body: nn.Module
    processor: SGPSImageProcessor
    lr: float = 0.01
    steps: int = 100
    weight_decay: float = 1e-4
    name: str = "Fine-tune head (linear probe)"
    needs_images: bool = True
    views: "TaskEmbedding | None" = None  # SGPS's support views (every view a training row) and task BatchNorm

    def adapt(self, episode: Episode) -> Predictor:
        with torch.no_grad():
            features, embed = _support_and_embed(self.body, self.processor, self.views, episode.support)
        labels = episode.support_labels.repeat_interleave(features.shape[1])
        head = fit_linear_head(
            features.flatten(0, 1), labels, len(episode.class_names), self.steps, self.lr, self.weight_decay
        )
        return torch.no_grad()(lambda images: head(embed(images)))

    def describe(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "steps": self.steps,
            "weight_decay": self.weight_decay,
            "optimizer": "Adam, full batch",
            "BatchNorm statistics": "body's running statistics",
            **_views_facts(self.views, "every view a training row"),
        }


@dataclass
class FineTuneMethod:
    """The body fine-tuned for ``steps`` Adam steps after a linear-probe head initialisation (LP-FT).

    ``top_blocks`` = None trains all layers; k trains only the last k block stages, ``conv_head`` and the head,
    with the frozen stages below memoised per image (the same method at a fraction of the CPU cost). The head
    starts as the linear probe of :class:`LinearProbeMethod` (``probe_lr``/``probe_steps``), so fine-tuning
    starts from a sensible classifier instead of destroying features with the gradients of a random head.
    Support batches get random flips, or with ``support_views`` each support image under one of those views drawn per
    step (SGPS's views as augmentation); ``task_batchnorm_images`` starts the trained part from BatchNorm statistics
    moved towards the support images' (all views), as SGPS's task BatchNorm. ``trace`` (optional) is called after
    every ``trace_every`` steps with ``(step, predictor)``: the benchmark uses it to find how long fine-tuning
    takes to reach its best accuracy.
    """

    body: nn.Module
    processor: SGPSImageProcessor
    lr: float = 3e-4
    steps: int = 20
    weight_decay: float = 1e-4
    probe_lr: float = 0.01
    probe_steps: int = 100
    top_blocks: int | None = None
    seed: int = 0
    name: str = "Fine-tune all layers"
    needs_images: bool = True
    trace: Callable[[int, Predictor], None] | None = field(default=None, repr=False)
    trace_every: int = 5
    support_views: tuple[str, ...] | None = None
    task_batchnorm_images: float | None = None

    def __post_init__(self) -> None:
        bottom, self._top = split_body(self.body, self.top_blocks)
        self._bottom = FeatureMemo(bottom) if bottom is not None else None

    def adapt(self, episode: Episode) -> Predictor:
        pixels = self.processor.normalize_uint8(episode.support)
        top = copy.deepcopy(self._top).eval()
        labels, n = episode.support_labels, len(episode.class_names)
        viewed = None
        if self.support_views:  # [V, S, ...]: each support image under every view, below the trained part
            viewed = torch.stack([self._below(apply_view(pixels, view)) for view in self.support_views])
        if self.task_batchnorm_images is not None:
            batch = viewed.flatten(0, 1) if viewed is not None else self._below(pixels)
            tensors = {**dict(top.named_parameters()), **dict(top.named_buffers())}
            weight = len(pixels) / (len(pixels) + self.task_batchnorm_images)
            adapted, _ = task_batchnorm(top, tensors, batch, weight)
            statistics = {k: v for k, v in adapted.items() if k.endswith(("running_mean", "running_var"))}
            top.load_state_dict(statistics, strict=False)
        support = self._below(pixels)
        with torch.no_grad():
            features = _eval_features(top, support)
        model = nn.Sequential(
            top, fit_linear_head(features, labels, n, self.probe_steps, self.probe_lr, self.weight_decay)
        ).eval()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(episode_seed(self.seed, max(episode.index, 0)))
        predict = torch.no_grad()(lambda images: model(self._below(self.processor.normalize_uint8(images))))
        for step in range(self.steps):
            if self.trace is not None and step % self.trace_every == 0:
                self.trace(step, predict)
            optimizer.zero_grad()
            # Flips of the frozen stages' feature maps stand in for flipped images when only the top is trained.
            nn.functional.cross_entropy(model(self._augment(support, viewed, generator)), labels).backward()
            optimizer.step()
        if self.trace is not None:
            self.trace(self.steps, predict)
        return predict

    @staticmethod
    def _augment(support: Tensor, viewed: Tensor | None, generator: torch.Generator) -> Tensor:
        if viewed is None:
            return random_flips(support, generator)
        pick = torch.randint(len(viewed), (support.shape[0],), generator=generator)
        return viewed[pick, torch.arange(support.shape[0])]

    def _below(self, images: Tensor) -> Tensor:
        return self._bottom(images) if self._bottom is not None else images

    def describe(self) -> dict[str, Any]:
        trained = (
            "all layers" if self.top_blocks is None else f"last {self.top_blocks} block stages + conv_head + head"
        )
        return {
            "lr": self.lr,
            "steps": self.steps,
            "weight_decay": self.weight_decay,
            "trained": trained,
            "optimizer": "Adam, full support batch, flips",
            "head init": f"linear probe ({self.probe_steps} steps, lr {self.probe_lr})",
            "BatchNorm statistics": "body's running statistics"
            if self.task_batchnorm_images is None
            else f"task-adaptive in the trained part (the body's count as {self.task_batchnorm_images:g} images)",
            **(
                {"support augmentation": f"one of SGPS's {len(self.support_views)} views per image and step"}
                if self.support_views
                else {}
            ),
        }


def split_body(body: nn.Module, top_blocks: int | None) -> tuple[nn.Module | None, nn.Module]:
    """(frozen bottom, trainable top) of a timm EfficientNet body; ``top_blocks`` None: (None, the whole body)."""
    if top_blocks is None:
        return None, body
    if not 1 <= top_blocks <= len(body.blocks):
        raise ValueError(f"top_blocks must be in 1..{len(body.blocks)}, got {top_blocks}.")
    cut = len(body.blocks) - top_blocks
    bottom = nn.Sequential(body.conv_stem, body.bn1, *body.blocks[:cut])
    top = nn.Sequential(*body.blocks[cut:], body.conv_head, body.bn2, body.global_pool)
    return bottom, top

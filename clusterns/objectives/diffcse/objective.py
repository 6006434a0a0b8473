"""DiffCSE (voidism/DiffCSE) and the KoDiffCSE recipe: InfoNCE + lambda * conditional replaced-token detection.

Each view of a sentence is corrupted by a frozen masked-LM generator (collator-side masking, then the
generator's argmax); a separate discriminator, whose position-0 embedding-layer output is replaced by
that view's (projected, not detached) sentence vector, predicts which tokens were replaced. The RTD
gradient flows through the sentence vector back into the projector and the encoder.

Faithful by default (voidism/DiffCSE diffcse/models.py; BM-K/KoDiffCSE model/diffcse/models.py), corrected by switch:

=========================  ===========================  ===========================================
switch                     default (original code)      alternative
=========================  ===========================  ===========================================
--generator_replace        argmax (repo)                sample (the paper's "sampling from a MLM")
--generator_dropout        True (generator in train     False (generator in eval mode)
                           mode, as a submodule of the
                           original model)
--rtd_reduction            all_positions (mean over     exclude_padding (mean over non-pad tokens),
                           all 2B*L positions, pads     sum_over_views (KoDiffCSE: one mean per view,
                           and position 0 included)     summed, = V x all_positions)
--masking_scheme           bert (80/10/10, dynamic)     kodiffcse (fixed count, [SEP], static)
--cond_source              post_projector: D is         pre_projector (= --before_mlp): the pooler
                           conditioned on the projected output before the projector;
                           vector (DiffCSE)             hf_pooler: projected by the checkpoint's
                                                        pretrained HF pooler (KoDiffCSE)
=========================  ===========================  ===========================================

Always corrected (no switch, identical numbers for the published base models): the CLS id written at
position 0 comes from the tokenizer (the original hard-coded 101 / 0) and the RTD head is
Linear(hidden_size, 2) (the original hard-coded 768).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForMaskedLM, AutoTokenizer

from clusterns.grad_cache import chunk_slices, chunked_sum
from clusterns.objectives.diffcse.discriminator import ConditionalDiscriminator, splice_cls_input
from clusterns.objectives.diffcse.masking import SCHEMES, MLMMasking
from clusterns.modeling.packing import enable_packed_linear, is_packed, keeping_token_layouts, known_index
from clusterns.objectives.base import EncodedViews, Objective, ObjectiveOutput
from clusterns.objectives.functional import at_least_fp32, infonce_logits, infonce_loss, similarity_logs
from clusterns.precision import fp32_region

logger = logging.getLogger(__name__)

REPLACE_MODES = ("argmax", "sample")
RTD_REDUCTIONS = ("all_positions", "exclude_padding", "sum_over_views")
COND_SOURCES = ("post_projector", "pre_projector", "hf_pooler")

__all__ = [
    "DiffCSEArguments",
    "DiffCSEObjective",
    "rtd_inputs",
    "rtd_loss",
    "rtd_loss_sum",
    "rtd_loss_normaliser",
    "rtd_metrics",
    "rtd_prediction_metrics",
    "generator_replacement",
    "splice_cls_input",
    "check_shared_vocabulary",
    "check_data_arguments",
]


@dataclass
class DiffCSEArguments:
    """DiffCSE's flags (names as in voidism/DiffCSE train.py) plus the faithful-vs-corrected switches."""

    generator_name: str | None = field(
        default=None,
        metadata={
            "help": "DiffCSE: masked-LM checkpoint used as the frozen generator (e.g. distilbert-base-uncased for BERT, "
            "distilroberta-base for RoBERTa). Must share the encoder's vocabulary. Required with --objective diffcse."
        },
    )
    lambda_weight: float = field(
        default=0.1,
        metadata={"help": "DiffCSE: weight of the RTD loss, loss = InfoNCE + lambda * RTD (code default 0.1; the recipes use 0.005)."},
    )
    masking_ratio: float = field(
        default=0.15,
        metadata={"help": "DiffCSE: probability of selecting a token for the generator's masking, in (0, 1) (code default 0.15; BERT recipe 0.30)."},
    )
    before_mlp: bool = field(
        default=False,
        metadata={"help": "DiffCSE: condition the discriminator on the pooler output before the projector (default: after it); "
                          "the original's spelling of --cond_source pre_projector."},
    )
    cond_source: str = field(
        default="post_projector",
        metadata={"help": "DiffCSE: the sentence vector the discriminator is conditioned on (also the contrastive vector): "
                          "post_projector (DiffCSE: after the projector), pre_projector (= --before_mlp), or hf_pooler "
                          "(KoDiffCSE: the checkpoint's pretrained HF pooler, dense+tanh, as the projector: selects "
                          "--projector hf_pooler instead of SimCSE's freshly initialised MLP)."},
    )
    batchnorm: bool = field(
        default=False,
        metadata={
            "help": "DiffCSE: use the BatchNorm projector (Linear-BN-ReLU-Linear-BN(affine=False), no biases) instead of "
            "SimCSE's MLP; same as --projector bn_mlp."
        },
    )
    generator_replace: str = field(
        default="argmax",
        metadata={"help": "DiffCSE: how the generator fills the sentence: argmax (original code) or sample (the paper)."},
    )
    generator_dropout: bool = field(
        default=True,
        metadata={"help": "DiffCSE: keep the frozen generator in train mode with dropout active, as the original (False: eval mode)."},
    )
    rtd_reduction: str = field(
        default="all_positions",
        metadata={
            "help": "DiffCSE: RTD cross-entropy reduction: all_positions (original: mean over all 2B*L positions, padding "
            "included), exclude_padding (mean over real tokens), sum_over_views (KoDiffCSE: per-view means summed)."
        },
    )
    masking_scheme: str = field(
        default="bert",
        metadata={
            "help": "DiffCSE: bert (80/10/10 with the mask token, dynamic per batch; DiffCSE) or kodiffcse (a fixed count "
            "max(1, int(n*ratio)) of tokens replaced by [SEP], static per sentence; KoDiffCSE)."
        },
    )

    def __post_init__(self):
        if not 0.0 < float(self.masking_ratio) < 1.0:
            raise ValueError(f"--masking_ratio must lie strictly between 0 and 1, got {self.masking_ratio}")
        if self.lambda_weight < 0:
            raise ValueError(f"--lambda_weight must be >= 0, got {self.lambda_weight}")
        if self.generator_replace not in REPLACE_MODES:
            raise ValueError(f"--generator_replace must be one of {', '.join(REPLACE_MODES)}, got {self.generator_replace!r}")
        if self.rtd_reduction not in RTD_REDUCTIONS:
            raise ValueError(f"--rtd_reduction must be one of {', '.join(RTD_REDUCTIONS)}, got {self.rtd_reduction!r}")
        if self.masking_scheme not in SCHEMES:
            raise ValueError(f"--masking_scheme must be one of {', '.join(SCHEMES)}, got {self.masking_scheme!r}")
        if self.cond_source not in COND_SOURCES:
            raise ValueError(f"--cond_source must be one of {', '.join(COND_SOURCES)}, got {self.cond_source!r}")
        if self.before_mlp and self.cond_source != "pre_projector":
            if self.cond_source != "post_projector":
                raise ValueError(f"--before_mlp means --cond_source pre_projector, but --cond_source {self.cond_source} was given; drop one")
            self.cond_source = "pre_projector"
        if self.cond_source == "hf_pooler" and self.batchnorm:
            raise ValueError("--cond_source hf_pooler uses the checkpoint's pooler as the projector, --batchnorm the BatchNorm one; drop one")

    @property
    def conditions_before_projector(self) -> bool:
        return self.cond_source == "pre_projector"


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def generator_replacement(logits: Tensor, mode: str = "argmax", vocab_limit: int | None = None) -> Tensor:
    """Token ids the generator puts at every position: argmax (original) or a sample of softmax(logits).

    ``vocab_limit`` drops logits of ids the discriminator cannot embed (a generator whose output layer is
    padded beyond the shared vocabulary)."""
    if vocab_limit is not None and logits.shape[-1] > vocab_limit:
        logits = logits[..., :vocab_limit]
    if mode == "argmax":
        return logits.argmax(dim=-1)
    if mode == "sample":
        # Gumbel-max: argmax(logits + G) is an exact sample of softmax(logits).
        u = torch.rand(logits.shape, device=logits.device, dtype=torch.float32).clamp_(1e-10, 1.0 - 1e-7)
        return (logits.float() - torch.log(-torch.log(u))).argmax(dim=-1)
    raise ValueError(f"unknown replacement mode {mode!r}")


def rtd_inputs(generator_ids: Tensor, input_ids: Tensor, attention_mask: Tensor, cls_token_id: int) -> tuple[Tensor, Tensor]:
    """The discriminator input and the replaced-token labels, as DiffCSE's cl_forward builds them.

    g = generator ids with column 0 := CLS; labels = (g != input_ids) * mask (every differing position
    counts, masked or not, special tokens included); discriminator input = g * mask (pads -> id 0,
    attention-masked). All [N, L]."""
    g = generator_ids.clone()
    g[:, 0] = cls_token_id
    mask = attention_mask.to(g.dtype)
    replaced = (g != input_ids).to(g.dtype) * mask
    return g * mask, replaced


def rtd_loss(logits: Tensor, labels: Tensor, attention_mask: Tensor, reduction: str = "all_positions", num_views: int = 2) -> Tensor:
    """Two-class cross-entropy of the RTD head, in fp32. logits [N, L, 2], labels/mask [N, L].

    all_positions: mean over all N*L positions (DiffCSE: pads and position 0 included, label 0 there).
    exclude_padding: mean over positions with attention_mask 1.
    sum_over_views: KoDiffCSE - rows are ordered (sentence, view); one all-positions mean per view,
    summed over the ``num_views`` views."""
    per_token = F.cross_entropy(at_least_fp32(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), reduction="none")
    per_token = per_token.view(labels.shape)
    if reduction == "all_positions":
        return per_token.mean()
    if reduction == "exclude_padding":
        mask = attention_mask.to(per_token.dtype)
        return (per_token * mask).sum() / mask.sum().clamp_min(1.0)
    if reduction == "sum_over_views":
        return per_token.view(-1, num_views, per_token.shape[-1]).mean(dim=(0, 2)).sum()
    raise ValueError(f"unknown RTD reduction {reduction!r}")


def rtd_loss_sum(logits: Tensor, labels: Tensor, attention_mask: Tensor, reduction: str = "all_positions") -> Tensor:
    """The numerator of rtd_loss: its per-token cross-entropies summed (over real tokens only for exclude_padding).
    rtd_loss = rtd_loss_sum / rtd_loss_normaliser, so a batch's loss is the sum of its chunks' sums over the whole
    batch's normaliser (--mini_batch_size)."""
    per_token = F.cross_entropy(at_least_fp32(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), reduction="none")
    if reduction == "exclude_padding":
        return (per_token * attention_mask.reshape(-1).to(per_token.dtype)).sum()
    if reduction in ("all_positions", "sum_over_views"):
        return per_token.sum()
    raise ValueError(f"unknown RTD reduction {reduction!r}")


def rtd_loss_normaliser(attention_mask: Tensor, reduction: str = "all_positions", num_views: int = 2) -> Tensor:
    """The denominator of rtd_loss for the whole batch's [N, L] mask: N*L positions (all_positions), the real
    tokens (exclude_padding), N*L/V (sum_over_views: V per-view means over (N/V)*L positions each, summed)."""
    if reduction == "all_positions":
        return attention_mask.new_tensor(float(attention_mask.numel()), dtype=torch.float32)
    if reduction == "exclude_padding":
        return attention_mask.float().sum().clamp_min(1.0)
    if reduction == "sum_over_views":
        return attention_mask.new_tensor(attention_mask.numel() / num_views, dtype=torch.float32)
    raise ValueError(f"unknown RTD reduction {reduction!r}")


def rtd_metrics(logits: Tensor, labels: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
    """DiffCSE's logged RTD diagnostics (detached) of the RTD head's logits; see rtd_prediction_metrics."""
    return rtd_prediction_metrics(logits.detach().argmax(dim=-1), labels, attention_mask)


def rtd_prediction_metrics(pred: Tensor, labels: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
    """DiffCSE's logged RTD diagnostics of the predicted labels pred [N, L] (1 = "replaced"):

    rtd/acc             accuracy over non-pad tokens (electra_acc)
    rtd/replaced_recall replaced tokens predicted "replaced" (electra_rep_acc; 0 instead of NaN if none)
    rtd/original_acc    original tokens predicted "original" (electra_fix_acc)
    rtd/replaced_frac   fraction of non-pad tokens that differ from the input
    """
    with torch.no_grad():
        mask = attention_mask.bool()
        lab = labels.bool()
        rep = lab & mask
        fix = ~lab & mask
        n_tok = mask.sum().clamp_min(1).float()
        return {
            "rtd/acc": ((pred == labels.long()) & mask).sum().float() / n_tok,
            "rtd/replaced_recall": ((pred == 1) & rep).sum().float() / rep.sum().clamp_min(1).float(),
            "rtd/original_acc": 1.0 - ((pred == 1) & fix).sum().float() / fix.sum().clamp_min(1).float(),
            "rtd/replaced_frac": rep.sum().float() / n_tok,
        }


# ---------------------------------------------------------------------------------------------
# Construction-time checks
# ---------------------------------------------------------------------------------------------

SPECIAL_ATTRS = ("cls_token", "sep_token", "pad_token", "mask_token", "unk_token", "bos_token", "eos_token")


def check_shared_vocabulary(encoder_tokenizer, generator_tokenizer, generator_name: str = "the generator") -> None:
    """Raise ValueError unless both tokenizers map the same tokens to the same ids (the generator's output
    ids are fed to the discriminator as ids of the encoder's vocabulary)."""
    problems = []
    n_enc, n_gen = len(encoder_tokenizer), len(generator_tokenizer)
    if n_enc != n_gen:
        problems.append(f"vocabulary sizes differ ({n_enc} for the encoder, {n_gen} for the generator)")
    for attr in SPECIAL_ATTRS:
        a = getattr(encoder_tokenizer, attr + "_id", None)
        b = getattr(generator_tokenizer, attr + "_id", None)
        if a != b:
            problems.append(f"{attr} id differs ({a} vs {b})")
    if not problems:
        enc_vocab = encoder_tokenizer.get_vocab()
        gen_vocab = generator_tokenizer.get_vocab()
        diff = [t for t, i in enc_vocab.items() if gen_vocab.get(t) != i]
        if diff:
            sample = ", ".join(repr(t) for t in diff[:5])
            problems.append(f"{len(diff)} tokens have other ids or are missing (e.g. {sample})")
    if problems:
        raise ValueError(
            f"--generator_name {generator_name!r} does not share the encoder's vocabulary: {'; '.join(problems)}. "
            "DiffCSE feeds the generator's token ids to a copy of the encoder, so both must use the same tokenizer "
            "(e.g. distilbert-base-uncased for bert-base-uncased, distilroberta-base for roberta-base, "
            "klue/roberta-small for klue/roberta-base)."
        )


def check_data_arguments(data_args: Any) -> None:
    """The check train.py runs for --objective diffcse: the original silently dropped the RTD loss with
    --pad_to_max_length (HF's default collator produced no mlm_input_ids)."""
    if getattr(data_args, "pad_to_max_length", False):
        raise ValueError(
            "--pad_to_max_length cannot be used with --objective diffcse: in the original DiffCSE it silently removed the "
            "RTD loss (plain SimCSE), and the published recipes pad each batch to its longest sentence; drop the flag"
        )


def load_generator(generator_name: str, model_args: Any) -> tuple[nn.Module, Any]:
    trust_pickle = bool(getattr(model_args, "trust_pickle", False))
    cache_dir = getattr(model_args, "cache_dir", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(generator_name, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - any failure means the vocabulary cannot be checked
        raise ValueError(
            f"--generator_name {generator_name!r}: its tokenizer cannot be loaded ({type(err).__name__}: {err}); "
            "the generator must ship its tokenizer so that its vocabulary can be checked against the encoder's"
        ) from None
    try:
        model = AutoModelForMaskedLM.from_pretrained(
            generator_name, cache_dir=cache_dir, use_safetensors=None if trust_pickle else True
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--generator_name {generator_name!r} cannot be loaded as a masked-LM model ({err}); give a masked-LM "
            "checkpoint with safetensors weights (or pass --trust_pickle for .bin files)"
        ) from None
    return model, tokenizer


# ---------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------


class DiffCSEObjective(Objective):
    """loss = InfoNCE(z1, z2 [, z3]) + lambda * RTD(discriminator(generator(masked x); pos0 := h)).

    Trainable parts owned here (and saved in the objective's state_dict): the discriminator backbone
    (``discriminator.backbone.*``, initialised as a copy of the encoder's pretrained weights) and the RTD
    head (``rtd_head``, Linear(H, 2), PyTorch default init as in the original ``electra_head``). The
    generator is frozen, kept out of the module tree (not in state_dict, not in the optimizer) and moved
    to the batch's device on first use. The BatchNorm projector (--batchnorm) belongs to the encoder.
    """

    name = "diffcse"
    description = "DiffCSE (contrastive + conditional replaced-token detection)"
    citation = ("Chuang et al. DiffCSE: Difference-based Contrastive Learning for Sentence Embeddings. NAACL 2022. "
                "voidism/DiffCSE; the KoDiffCSE recipe: BM-K/KoDiffCSE")
    arguments_class = DiffCSEArguments
    # The generator and discriminator are full transformers: they run under the trainer's autocast
    # (--fp16/--bf16), as the original's native AMP did; the InfoNCE logits and the RTD cross-entropy are
    # computed in fp32_region regardless.
    runs_subnetworks_in_autocast = True

    @classmethod
    def check_data_arguments(cls, data_args: Any, objective_args: Any) -> None:
        check_data_arguments(data_args)  # --pad_to_max_length is refused

    @classmethod
    def required_projector(cls, objective_args: Any) -> tuple[str, str] | None:
        """--batchnorm: DiffCSE's BatchNorm projector; --cond_source hf_pooler: the checkpoint's pretrained pooler."""
        if objective_args is None:
            return None
        if objective_args.batchnorm:
            return ("bn_mlp", "--batchnorm")
        if objective_args.cond_source == "hf_pooler":
            return ("hf_pooler", "--cond_source hf_pooler")
        return None

    def __init__(self, model_args: Any, objective_args: DiffCSEArguments | None = None, encoder: nn.Module | None = None,
                 generator: nn.Module | None = None, generator_tokenizer: Any = None):
        super().__init__(model_args, objective_args, encoder)
        args = objective_args if objective_args is not None else DiffCSEArguments()
        self.args = args
        if encoder is None:
            raise ValueError("DiffCSEObjective needs the encoder (its backbone initialises the discriminator)")
        if generator is None and not args.generator_name:
            raise ValueError(
                "--generator_name is required with --objective diffcse: a masked-LM checkpoint sharing the encoder's "
                "vocabulary (distilbert-base-uncased for BERT, distilroberta-base for RoBERTa)"
            )
        projector = getattr(getattr(encoder, "config", None), "projector", None)
        if args.batchnorm and isinstance(projector, str) and projector not in ("bn_mlp", "auto"):
            raise ValueError(f"--batchnorm selects the bn_mlp projector, but --projector {projector} was given; drop one of them")
        self.tokenizer = encoder.tokenizer
        self.hidden_size = int(encoder.hidden_size)
        self.cls_token_id = self.tokenizer.cls_token_id
        if self.cls_token_id is None:
            raise ValueError(f"the encoder's tokenizer ({type(self.tokenizer).__name__}) has no CLS/<s> token")
        self.lambda_weight = float(args.lambda_weight)

        if generator is None:
            generator, generator_tokenizer = load_generator(args.generator_name, model_args)
        if generator_tokenizer is not None:
            check_shared_vocabulary(self.tokenizer, generator_tokenizer, args.generator_name or type(generator).__name__)
        gen_rows = generator.get_input_embeddings().num_embeddings
        if gen_rows < len(self.tokenizer):
            raise ValueError(
                f"the generator embeds {gen_rows} ids but the tokenizer has {len(self.tokenizer)}: random replacement ids "
                "would be out of range"
            )
        for p in generator.parameters():
            p.requires_grad_(False)
        # Outside the module tree: not in state_dict(), parameters(), .to(), .train().
        self.__dict__["generator"] = generator

        self.discriminator = ConditionalDiscriminator.from_encoder_backbone(encoder.backbone)
        if self.discriminator.hidden_size != self.hidden_size:
            raise ValueError("discriminator and encoder hidden sizes differ")
        self.vocab_limit = int(self.discriminator.backbone.get_input_embeddings().num_embeddings)
        self.rtd_head = nn.Linear(self.hidden_size, 2)  # PyTorch default init, like the original electra_head
        ref = next(encoder.backbone.parameters())
        self.rtd_head.to(device=ref.device, dtype=ref.dtype)
        self.packed_generator_head = None
        if is_packed(encoder.backbone):  # --packed_linear: follow the encoder where results stay the same
            self._pack_extra_passes(generator, args.rtd_reduction)

    def _pack_extra_passes(self, generator: nn.Module, rtd_reduction: str) -> None:
        """Run the generator (and, when pads leave the loss, the discriminator) on non-pad tokens only.

        Generator: its pad-position predictions are discarded (rtd_inputs multiplies by the mask), so its
        layers and, above all, its vocabulary-sized MLM head run on the non-pad tokens only.
        Discriminator: the original RTD loss averages over every position, pads included, and a pad
        query's state depends on the real tokens, so it is packed only with --rtd_reduction exclude_padding."""
        head = next((getattr(generator, n) for n in ("cls", "lm_head") if isinstance(getattr(generator, n, None), nn.Module)), None)
        base = getattr(generator, "base_model", None)
        if head is not None and base is not None and base is not generator and enable_packed_linear(base):
            # Outside the module tree, like the generator (not saved, not trained).
            self.__dict__["packed_generator_head"] = head
            self.__dict__["generator_base"] = base
        if rtd_reduction == "exclude_padding":
            enable_packed_linear(self.discriminator.backbone)

    # ---- collator side ------------------------------------------------------------------------
    def batch_transform(self, tokenizer) -> MLMMasking:
        return MLMMasking.from_tokenizer(tokenizer, self.args.masking_scheme, self.args.masking_ratio)

    # ---- generator ----------------------------------------------------------------------------
    def _generator_on(self, device: torch.device) -> nn.Module:
        gen = self.generator
        if next(gen.parameters()).device != device:
            gen.to(device)
        gen.train(self.training and self.args.generator_dropout)
        return gen

    def padding_invariant(self) -> bool:
        return self.args.rtd_reduction != "all_positions"  # the original's RTD mean counts pad positions

    @torch.no_grad()
    def corrupt(self, mlm_input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Generator replacement ids [N, L] for the masked inputs (no gradient)."""
        gen = self._generator_on(mlm_input_ids.device)
        if self.packed_generator_head is None:
            logits = gen(input_ids=mlm_input_ids, attention_mask=attention_mask).logits
            return generator_replacement(logits, self.args.generator_replace, self.vocab_limit)
        # Packed: the MLM head (a [tokens, vocab] product) on the non-pad tokens only; pads get id 0,
        # which rtd_inputs' mask would give them anyway.
        hidden = self.generator_base(input_ids=mlm_input_ids, attention_mask=attention_mask)[0]
        keep = known_index(attention_mask.reshape(-1, attention_mask.shape[-1]))  # the collator's, when it has it
        logits = self.packed_generator_head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep))
        ids = mlm_input_ids.new_zeros(mlm_input_ids.numel())
        ids[keep] = generator_replacement(logits, self.args.generator_replace, self.vocab_limit)
        return ids.view_as(mlm_input_ids)

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, views: EncodedViews, batch: dict[str, Tensor], encoder: nn.Module) -> ObjectiveOutput:
        if "mlm_input_ids" not in batch:
            raise ValueError(
                "the batch has no mlm_input_ids: DiffCSE needs its masking batch_transform in the collator "
                "(ContrastiveCollator(batch_transform=objective.batch_transform(tokenizer)))"
            )
        input_ids = batch["input_ids"]
        batch_size, num_views, length = input_ids.shape
        ids = input_ids.reshape(-1, length)
        attn = batch["attention_mask"].reshape(-1, length)
        mlm_ids = batch["mlm_input_ids"].reshape(-1, length)
        token_type_ids = batch.get("token_type_ids")
        if token_type_ids is not None:
            token_type_ids = token_type_ids.reshape(-1, length)

        # Contrastive part: SimCSE InfoNCE over the gathered projected views.
        z = views.gathered
        z3 = z[:, 2] if z.shape[1] > 2 else None
        with fp32_region(z.device.type):
            logits = infonce_logits(z[:, 0], z[:, 1], self.temp, z3, self.hard_negative_weight)
            contrastive = infonce_loss(logits, views.duplicates)

        # RTD part on this rank's rows: generator -> labels -> conditional discriminator -> head.
        cond = (views.pooled if self.args.conditions_before_projector else views.local).reshape(batch_size * num_views, -1)
        if views.mini_batch_size is None:
            g = self.corrupt(mlm_ids, attn)
            disc_ids, replaced = rtd_inputs(g, ids, attn, self.cls_token_id)
            rtd_logits = self._rtd_logits(disc_ids, attn, cond, token_type_ids)
            with fp32_region(z.device.type):
                rtd = rtd_loss(rtd_logits, replaced, attn, self.args.rtd_reduction, num_views)
            pred = rtd_logits.detach().argmax(dim=-1)
        else:
            rtd, pred, replaced = self._chunked_rtd(views.mini_batch_size, num_views, ids, attn, mlm_ids, cond, token_type_ids)
        loss = contrastive + self.lambda_weight * rtd

        logs = similarity_logs(logits[:, : z.shape[0]] * self.temp)
        logs["contrastive/loss"] = contrastive.detach()
        logs["rtd/loss"] = rtd.detach()
        logs.update(rtd_prediction_metrics(pred, replaced, attn))
        return ObjectiveOutput(loss=loss, logs=logs)

    def _rtd_logits(self, disc_ids: Tensor, attn: Tensor, cond: Tensor, token_type_ids: Tensor | None) -> Tensor:
        """The RTD head's logits [N, L, 2] (fp32) of the discriminator conditioned on the sentence vectors cond."""
        hidden = self.discriminator(disc_ids, attn, cond, token_type_ids)
        return at_least_fp32(self.rtd_head(hidden))

    def _chunked_rtd(self, mini_batch_size: int, num_views: int, ids: Tensor, attn: Tensor, mlm_ids: Tensor, cond: Tensor,
                     token_type_ids: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(RTD loss, predictions, labels) with the generator and the discriminator run in chunks of
        mini_batch_size sentences (--mini_batch_size; rows are (sentence, view)): the generator once per chunk (no gradient), the discriminator without a graph and
        replayed in the backward pass (grad_cache.chunked_sum), its gradient with respect to the chunk's sentence
        vectors flowing on into the projector and the encoder. The loss is the chunks' summed cross-entropies over
        the whole batch's normaliser: the same number as the whole-batch loss."""
        slices = chunk_slices(ids.shape[0], mini_batch_size * num_views)
        g = torch.cat([self.corrupt(mlm_ids[piece], attn[piece]) for piece in slices])
        disc_ids, replaced = rtd_inputs(g, ids, attn, self.cls_token_id)

        def chunk_term(piece: slice, cond_rows: Tensor) -> tuple[Tensor, Tensor]:
            types = token_type_ids[piece] if token_type_ids is not None else None
            rtd_logits = self._rtd_logits(disc_ids[piece], attn[piece], cond_rows, types)
            with fp32_region(rtd_logits.device.type):
                term = rtd_loss_sum(rtd_logits, replaced[piece], attn[piece], self.args.rtd_reduction)
            return term, rtd_logits.detach().argmax(dim=-1)

        total, preds = chunked_sum(keeping_token_layouts(chunk_term), slices, cond, anchor=self.rtd_head.weight)
        rtd = total / rtd_loss_normaliser(attn, self.args.rtd_reduction, num_views)
        return rtd, torch.cat(preds), replaced

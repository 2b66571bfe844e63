"""The mlm task type: BERT masking, the tied prediction head, its loss, checkpoints, config errors,
and ``include_task_texts`` (other tasks' train texts, never their validation / test texts)."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F

from mtl_ray.config import TaskConfig, config_from_dict
from mtl_ray.data.task_texts import with_task_texts
from mtl_ray.errors import ConfigError, DataError
from mtl_ray.model.encoder import load_encoder
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.tasks.base import TaskSpec, get_task_type, resolve_spec
from mtl_ray.tasks.heads import HEAD_INIT_STD
from mtl_ray.tasks.mlm import IGNORE_INDEX, mask_tokens, step_generator
from mtl_ray.testing import tiny_vocab
from mtl_ray.training.checkpointing import model_from_checkpoint, save_training_checkpoint
from mtl_ray.training.frozen import FrozenTrunk

MASK, SPECIAL, V = 4, (0, 1, 2, 3, 4), len(tiny_vocab())  # tiny tokenizer: [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4


def mlm_cfg(**kw) -> TaskConfig:
    return TaskConfig(name="mlm", type="mlm", source="x.csv", **kw)


@pytest.fixture(scope="module")
def encoder_and_tokenizer(tiny_encoder_dir):
    return load_encoder(str(tiny_encoder_dir))


@pytest.fixture
def model(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    torch.manual_seed(0)
    spec = resolve_spec(TaskSpec.from_config(mlm_cfg(), None), mlm_cfg(), tokenizer)
    specs = {"mlm": spec, "cls": TaskSpec("cls", "classification", ("a", "b"), ("accuracy",))}
    import copy

    return MultiTaskModel(copy.deepcopy(encoder), specs)


def batch_of(tokenizer, texts):
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


# --------------------------------------------------------------------------- masking


def test_masking_matches_a_hand_check_with_a_fixed_generator():
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]])  # [CLS] .. [SEP] (+ padding)
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    masked, labels = mask_tokens(
        ids,
        attention,
        mask_token_id=MASK,
        special_token_ids=SPECIAL,
        vocab_size=V,
        probability=0.5,
        generator=torch.Generator().manual_seed(3),
    )
    # the same draws, in the documented order, checked position by position
    g = torch.Generator().manual_seed(3)
    u, v, r = torch.rand(2, 6, generator=g), torch.rand(2, 6, generator=g), torch.randint(V, (2, 6), generator=g)
    n_chosen = 0
    for i in range(2):
        for j in range(6):
            candidate = attention[i, j] == 1 and int(ids[i, j]) not in SPECIAL
            if candidate and u[i, j] < 0.5:
                n_chosen += 1
                assert labels[i, j] == ids[i, j]
                want = MASK if v[i, j] < 0.8 else int(r[i, j]) if v[i, j] < 0.9 else int(ids[i, j])
                assert masked[i, j] == want, (i, j)
            else:
                assert labels[i, j] == IGNORE_INDEX and masked[i, j] == ids[i, j], (i, j)
    assert n_chosen > 0  # seed 3 chooses some tokens: the check above is not vacuous
    assert (labels != IGNORE_INDEX).sum() == n_chosen


def test_masking_statistics_are_bert_s_80_10_10_on_non_special_tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (400, 64), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    attention = torch.ones_like(ids)
    attention[::2, 40:] = 0  # padding on every other row
    ids[::2, 40:] = 0
    masked, labels = mask_tokens(
        ids, attention, mask_token_id=MASK, special_token_ids=SPECIAL, vocab_size=V, probability=0.15, generator=g
    )
    candidates = (attention == 1) & (ids > 4)
    chosen = labels != IGNORE_INDEX
    assert not (chosen & ~candidates).any()  # never a special or padding token
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])  # unchosen tokens are untouched
    n = int(chosen.sum())
    assert n / int(candidates.sum()) == pytest.approx(
        0.15, abs=0.005
    )  # ~20k candidates: std 0.0025 (seeded: deterministic)
    to_mask = (masked[chosen] == MASK).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert to_mask == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1 + 0.1 / V, abs=0.015)  # 10 % kept, + random draws of the same id
    assert 1 - to_mask - kept == pytest.approx(0.1 * (1 - 1 / V), abs=0.015)


def test_a_batch_always_predicts_at_least_one_token():
    ids = torch.tensor([[2, 10, 11, 3]])
    masked, labels = mask_tokens(
        ids,
        torch.ones_like(ids),
        mask_token_id=MASK,
        special_token_ids=SPECIAL,
        vocab_size=V,
        probability=1e-9,
        generator=torch.Generator().manual_seed(0),
    )
    u = torch.rand(1, 4, generator=torch.Generator().manual_seed(0))
    pick = 1 if u[0, 1] < u[0, 2] else 2  # the candidate with the smaller draw
    assert (labels != IGNORE_INDEX).nonzero().tolist() == [[0, pick]]


def test_masks_are_a_function_of_the_step_seed():
    ids, att = torch.randint(5, V, (4, 16)), torch.ones(4, 16, dtype=torch.long)
    kw = {"mask_token_id": MASK, "special_token_ids": SPECIAL, "vocab_size": V, "probability": 0.3}
    runs = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)  # what MultiTaskTrainer._seed_slice does before every forward
        runs.append(mask_tokens(ids, att, generator=step_generator(), **kw))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


# --------------------------------------------------------------------------- head and loss


def test_the_decoder_is_the_input_embedding_parameter_and_a_step_moves_both(model, encoder_and_tokenizer):
    head, emb = model.heads["mlm"], model.shared.embeddings.word_embeddings.weight
    assert head.decoder_weight is emb
    assert all(p is not emb for p in head.parameters())  # registered once, on the shared encoder
    assert sum(p is emb for p in model.parameters()) == 1
    assert head.bias.shape == (emb.shape[0],)
    before = emb.detach().clone()
    torch.manual_seed(0)
    model.loss("mlm", batch_of(encoder_and_tokenizer[1], ["good movie the best", "bad film"])).backward()
    unused = 150  # a token id in no input row: only the tied decoder gives its embedding row a gradient
    assert emb.grad[unused].abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert not torch.equal(emb, before) and head.decoder_weight is emb


def test_the_head_is_initialised_like_bert(model):
    head = model.heads["mlm"]
    assert head.dense.weight.std().item() == pytest.approx(HEAD_INIT_STD, rel=0.1)
    assert torch.equal(head.dense.bias, torch.zeros_like(head.dense.bias))
    assert torch.equal(head.layer_norm.weight, torch.ones_like(head.layer_norm.weight))
    assert torch.equal(head.layer_norm.bias, torch.zeros_like(head.layer_norm.bias))
    assert torch.equal(head.bias, torch.zeros_like(head.bias))
    assert head.layer_norm.eps == model.hf_config.layer_norm_eps


def test_loss_equals_cross_entropy_over_the_masked_positions_by_hand(model, encoder_and_tokenizer):
    model.eval()  # no dropout: the hand computation sees the same function
    batch = batch_of(encoder_and_tokenizer[1], ["good movie the best film", "bad terrible plot"])
    torch.manual_seed(5)
    loss = model.loss("mlm", batch)

    torch.manual_seed(5)
    opts = model.specs["mlm"].options
    ids, labels = mask_tokens(
        batch["input_ids"],
        batch["attention_mask"],
        mask_token_id=opts["mask_token_id"],
        special_token_ids=opts["special_token_ids"],
        vocab_size=V,
        probability=0.15,
        generator=step_generator(),
    )
    head = model.heads["mlm"]
    with torch.no_grad():
        hidden = model.encode_shared(ids, batch["attention_mask"], batch["token_type_ids"])  # (B, T, H)
        h = F.layer_norm(F.gelu(hidden @ head.dense.weight.T + head.dense.bias), (hidden.shape[-1],), eps=1e-12)
        logits = h @ model.shared.embeddings.word_embeddings.weight.T + head.bias  # (B, T, V)
        logp = logits.log_softmax(-1)
        terms = [-logp[i, j, labels[i, j]] for i, j in (labels != IGNORE_INDEX).nonzero().tolist()]
    assert len(terms) > 0
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    # the type's generic loss on full logits agrees (CE with ignore_index)
    spec = model.specs["mlm"]
    assert get_task_type("mlm").loss(logits, {"labels": labels}, spec).item() == pytest.approx(loss.item(), rel=1e-5)


def test_the_head_warm_up_loss_is_the_same_value_and_reaches_only_the_head(model, encoder_and_tokenizer):
    batch = batch_of(encoder_and_tokenizer[1], ["good movie the best", "bad film"])
    torch.manual_seed(3)
    full = model.loss("mlm", batch)  # dropout on (train mode): both calls draw the same masks and dropout
    torch.manual_seed(3)
    warm = get_task_type("mlm").model_loss(model, "mlm", batch, train_encoder=False)
    assert warm.item() == full.item()
    warm.backward()
    head = model.heads["mlm"]
    own = {id(p) for p in head.parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(p.grad is None for p in model.parameters() if id(p) not in own)  # encoder and tied embeddings


def test_a_checkpoint_saves_the_tied_weight_once_and_loads_tied(model, encoder_and_tokenizer, tiny_config, tmp_path):
    cfg = tiny_config()
    path = save_training_checkpoint(tmp_path / "ckpt", cfg, model, encoder_and_tokenizer[1], None)
    from mtl_ray.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, verify=True, load_training_state=False)
    vocab_by_hidden = [k for k, v in ckpt.model_state.items() if tuple(v.shape) == (V, model.hidden_size)]
    assert vocab_by_hidden == ["shared.embeddings.word_embeddings.weight"]
    assert sorted(k for k in ckpt.model_state if k.startswith("heads.mlm.")) == [
        "heads.mlm.bias",
        "heads.mlm.dense.bias",
        "heads.mlm.dense.weight",
        "heads.mlm.layer_norm.bias",
        "heads.mlm.layer_norm.weight",
    ]
    assert ckpt.meta["specs"]["mlm"]["options"] == model.specs["mlm"].options
    loaded, _ = model_from_checkpoint(ckpt)
    assert loaded.specs["mlm"] == model.specs["mlm"]
    assert loaded.heads["mlm"].decoder_weight is loaded.shared.embeddings.word_embeddings.weight
    model.eval(), loaded.eval()
    batch = batch_of(encoder_and_tokenizer[1], ["good movie", "bad plot the film"])
    torch.manual_seed(1)
    a = model.loss("mlm", batch)
    torch.manual_seed(1)
    assert loaded.loss("mlm", batch).item() == a.item()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"type": "classification", "mask_probability": 0.2},
            "tasks.t.mask_probability: a classification task masks no tokens; only mlm tasks read it",
        ),
        ({"type": "mlm", "mask_probability": 1.5}, r"tasks.t.mask_probability: must be in \(0, 1\), got 1.5"),
        ({"type": "mlm", "mask_probability": 0.0}, r"tasks.t.mask_probability: must be in \(0, 1\), got 0.0"),
        (
            {"type": "classification", "head_warmup_steps": 10},
            "tasks.t.head_warmup_steps: a classification task has no head warm-up; only mlm tasks read it",
        ),
        ({"type": "mlm", "head_warmup_steps": -1}, "tasks.t.head_warmup_steps: must be >= 0, got -1"),
        ({"type": "mlm", "head_warmup_steps": 2.5}, "tasks.t.head_warmup_steps: must be an integer, got 2.5"),
        (
            {"type": "regression", "include_task_texts": True},
            "tasks.t.include_task_texts: only an unsupervised task .* this is a regression task",
        ),
    ],
)
def test_bad_mlm_config_names_the_key(kw, message):
    with pytest.raises(ConfigError, match=message):
        TaskConfig(name="t", source="x.csv", **kw)


def test_a_tokenizer_without_a_mask_token_is_refused():
    class NoMask:
        mask_token_id = None
        all_special_ids = [0]

    with pytest.raises(ConfigError, match="tasks.mlm: the encoder's tokenizer \\(NoMask\\) has no mask token"):
        resolve_spec(TaskSpec.from_config(mlm_cfg(), None), mlm_cfg(), NoMask())


def test_an_unresolved_mlm_spec_fails_with_a_clear_error(encoder_and_tokenizer):
    import copy

    m = MultiTaskModel(copy.deepcopy(encoder_and_tokenizer[0]), {"mlm": TaskSpec.from_config(mlm_cfg(), None)})
    with pytest.raises(ConfigError, match="tasks.mlm: the mlm spec has no masking options"):
        m.loss("mlm", batch_of(encoder_and_tokenizer[1], ["good movie"]))


def test_a_frozen_trunk_refuses_an_mlm_task(model, tiny_encoder_dir, tiny_task_files, tmp_path):
    cfg = config_from_dict(
        {
            "tasks": {"mlm": {"type": "mlm", "source": str(tiny_task_files["score"])}},
            "model": {"encoder": str(tiny_encoder_dir)},
            "train": {"freeze_shared": True, "output_dir": str(tmp_path)},
        }
    )
    with pytest.raises(ConfigError, match="tasks.mlm: a mlm task trains the shared encoder .* train.freeze_shared"):
        FrozenTrunk.for_training(cfg, model, {"mlm": None})


# --------------------------------------------------------------------------- include_task_texts


def _splits(**columns_by_split):
    return datasets.DatasetDict({s: datasets.Dataset.from_dict(c) for s, c in columns_by_split.items()})


def test_task_texts_add_train_texts_only_and_never_a_held_out_text():
    own = _splits(train={"text": ["u1", "u2", "leaked test text"]}, validation={"text": ["uv"]}, test={"text": ["ut"]})
    cls = _splits(
        train={"text": ["c1", "u1", "c2", "c-val"], "label": [0, 1, 0, 1]},
        validation={"text": ["c-val"], "label": [0]},
        test={"text": ["c-test"], "label": [1]},
    )
    pair = _splits(
        train={"text": ["p1a", "p2a"], "text_pair": ["p1b", "c1"], "label": [0, 1]},
        validation={"text": ["pva"], "text_pair": ["pvb"], "label": [0]},
        test={"text": ["leaked test text"], "text_pair": ["ptb"], "label": [0]},
    )
    out = with_task_texts("mlm", own, {"cls": cls, "pair": pair})
    # own texts first (a held-out one dropped), then each task's train texts in name order, no duplicates
    assert out["train"]["text"] == ["u1", "u2", "c1", "c2", "p1a", "p2a", "p1b"]
    assert out["validation"]["text"] == ["uv"] and out["test"]["text"] == ["ut"]
    assert out["train"].column_names == ["text"]


def test_task_texts_need_every_other_task_s_train_split():
    own = _splits(train={"text": ["u1"]})
    streamed = _splits(validation={"text": ["v"], "label": [0]})
    with pytest.raises(DataError, match="tasks.mlm.include_task_texts: task 'big' has no in-memory train split"):
        with_task_texts("mlm", own, {"big": streamed})

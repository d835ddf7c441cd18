import json

import datasets
import pytest

from prorl.config import ConfigError, load_config
from prorl.data import StreamingPrompts, epoch_order, load_prompt_dataset, render_prompts, steps_per_epoch


def cfg(**kw):
    return load_config(None, kw)


ROWS = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(6)]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "disk"])
def test_local_formats_keep_columns(tmp_path, fmt):
    path = tmp_path / f"p.{fmt}"
    ds = datasets.Dataset.from_list(ROWS)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        ds.to_json(str(path))
    elif fmt == "csv":
        ds.to_csv(str(path), index=False)
    elif fmt == "parquet":
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path))
    out = load_prompt_dataset(cfg(dataset=str(path), prompt_column="question"))
    assert out["prompt"] == [r["question"] for r in ROWS]
    assert [str(a) for a in out["answer"]] == [r["answer"] for r in ROWS]


def test_txt_one_prompt_per_line_skips_blank(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("write a function\n\n   \nsort a list\n")
    assert load_prompt_dataset(cfg(dataset=str(path)))["prompt"] == ["write a function", "sort a list"]


def test_builtin_default_and_max_prompts():
    ds = load_prompt_dataset(cfg())
    assert {"prompt", "answer"} <= set(ds.column_names) and len(ds) > 100
    assert len(load_prompt_dataset(cfg(max_prompts=10))) == 10


@pytest.mark.parametrize(
    "setup, fragment",
    [
        (lambda p: p.write_text(""), "is an empty file"),
        (lambda p: p.write_text('{"question": "hi"}\n'), "has no column 'prompt'; columns are: question"),
        (lambda p: p.write_bytes(b'{"prompt": "caf\xe9"}\n'), "UTF-8"),
        (lambda p: p.write_text('{"prompt": ""}\n{"prompt": "  "}\n'), "no non-empty prompts"),
    ],
)
def test_bad_files_fail_with_one_line(tmp_path, setup, fragment):
    path = tmp_path / "bad.jsonl"
    setup(path)
    with pytest.raises(ConfigError) as e:
        load_prompt_dataset(cfg(dataset=str(path)))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_unknown_builtin(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_prompt_dataset(cfg(dataset=str(tmp_path / "nope.jsonl")))
    with pytest.raises(ConfigError, match="builtin:nope"):
        load_prompt_dataset(cfg(dataset="builtin:nope"))


def test_epoch_order_is_a_seeded_permutation():
    a, b = epoch_order(50, 0, 1), epoch_order(50, 1, 1)
    assert sorted(a) == list(range(50)) and a != b
    assert a == epoch_order(50, 0, 1) and a != epoch_order(50, 0, 2)
    assert steps_per_epoch(50, 8) == 6  # the 2 left over are reshuffled into later epochs


class _ChatTok:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"


def test_chat_rendering_with_system_prompt():
    c = cfg(chat_template=True, system_prompt="be brief")
    assert render_prompts(["2+2?"], _ChatTok(), c) == ["system:be brief|user:2+2?|assistant:"]
    # conversational rows use the template even when chat_template is off
    msgs = [[{"role": "user", "content": "hi"}]]
    assert render_prompts(msgs, _ChatTok(), cfg()) == ["user:hi|assistant:"]
    assert render_prompts(["plain"], _ChatTok(), cfg()) == ["plain"]


def test_special_tokens_are_added_once_whether_or_not_the_chat_template_rendered_the_prompt():
    """A tokenizer that adds BOS, a template that writes it: message lists use the template even with
    chat_template off, and must not get a second BOS when tokenised; plain prompts get theirs."""
    import sys

    from tokenizers import processors

    from prorl.data import tokenize_prompts

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "launch"))
    import bench

    tok = bench.build_tokenizer()
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    tok.chat_template = "<bos>{% for m in messages %}{{ m['content'] }}{% endfor %}="
    assert tok("ab")["input_ids"][0] == bos  # this tokenizer does add BOS
    for c in (cfg(), cfg(chat_template=True)):
        prompts = render_prompts([[{"role": "user", "content": "ab"}], "cd" if not c.chat_template else "ef"], tok, c)
        ids, mask, _ = tokenize_prompts(tok, prompts, 32)
        for row, m in zip(ids.tolist(), mask.tolist()):
            real = [t for t, k in zip(row, m) if k]
            assert real[0] == bos and real.count(bos) == 1, real
        assert tokenize_prompts(tok, prompts[1:], 32)[0].tolist()[0].count(bos) == 1  # a slice keeps the flags


def test_chat_template_missing_is_a_config_error():
    class NoTemplate:
        chat_template = None

    with pytest.raises(ConfigError, match="no chat template"):
        render_prompts(["x"], NoTemplate(), cfg(chat_template=True))


def test_hub_style_loader_with_data_files_pattern_and_renames(tmp_path):
    """`dataset: json` + a data_files glob goes through the same load_dataset call a Hub name does."""
    for part in range(2):
        (tmp_path / f"shard-{part}.jsonl").write_text(
            "".join(json.dumps({"question": f"q{part}{i}", "solution": str(i)}) + "\n" for i in range(3)))
    c = cfg(dataset="json", data_files=str(tmp_path / "shard-*.jsonl"), prompt_column="question",
            rename_columns={"solution": "answer"})
    ds = load_prompt_dataset(c)
    assert sorted(ds["prompt"]) == ["q00", "q01", "q02", "q10", "q11", "q12"]
    assert set(ds.column_names) == {"prompt", "answer"}
    with pytest.raises(ConfigError, match="rename_columns names"):
        load_prompt_dataset(cfg(dataset="json", data_files=str(tmp_path / "shard-*.jsonl"), rename_columns={"nope": "x"}))


def test_chat_messages_column(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"}) + "\n")
    ds = load_prompt_dataset(cfg(dataset=str(path), prompt_column="messages"))
    assert ds[0]["prompt"] == [{"role": "user", "content": "2+2?"}]
    assert render_prompts(ds["prompt"], _ChatTok(), cfg()) == ["user:2+2?|assistant:"]


# --- streaming (datasets.IterableDataset) ---------------------------------------------------------

def _jsonl(tmp_path, n=7, name="s.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"question": f"q{i}", "solution": str(i)}) + "\n" for i in range(n)) + '{"question": "  ", "solution": "x"}\n')
    return path


def test_streaming_local_file_is_an_iterable_with_renames_and_no_empty_prompts(tmp_path):
    c = cfg(dataset=str(_jsonl(tmp_path)), streaming=True, max_steps=1, prompt_column="question", rename_columns={"solution": "answer"})
    ds = load_prompt_dataset(c)
    assert isinstance(ds, datasets.IterableDataset)
    rows = list(ds)
    assert [r["prompt"] for r in rows] == [f"q{i}" for i in range(7)]  # the blank prompt is dropped
    assert all(r["answer"] == r["prompt"][1:] for r in rows)
    with pytest.raises(ConfigError, match="has no column 'nope'"):
        load_prompt_dataset(cfg(dataset=str(_jsonl(tmp_path)), streaming=True, max_steps=1, prompt_column="nope"))


def test_streaming_builtin_and_glob_sources_stream_too(tmp_path):
    ds = load_prompt_dataset(cfg(dataset="builtin:arithmetic", streaming=True, max_steps=1, max_prompts=5))
    assert isinstance(ds, datasets.IterableDataset) and len(list(ds)) == 5
    for part in range(2):
        _jsonl(tmp_path, n=3, name=f"shard-{part}.jsonl")
    ds = load_prompt_dataset(cfg(dataset="json", data_files=str(tmp_path / "shard-*.jsonl"), streaming=True, max_steps=1,
                                 prompt_column="question"))
    assert sorted(r["prompt"] for r in ds) == ["q0", "q0", "q1", "q1", "q2", "q2"]


def test_streaming_prompts_epochs_are_reshuffled_passes_and_seek_resumes_exactly(tmp_path):
    c = cfg(dataset=str(_jsonl(tmp_path)), streaming=True, max_steps=1, prompt_column="question")
    stream = StreamingPrompts(load_prompt_dataset(c), seed=1, shuffle_buffer=100)
    drawn = [r["prompt"] for r in stream.take(5) + stream.take(9)]  # crosses into epoch 1
    assert stream.epoch == 1 and stream.position == 14
    first, second = drawn[:7], drawn[7:]
    assert sorted(first) == sorted(second) == [f"q{i}" for i in range(7)]  # each epoch is one pass
    assert first != second  # reseeded per epoch
    assert first != [f"q{i}" for i in range(7)]  # shuffled
    again = StreamingPrompts(load_prompt_dataset(c), seed=1, shuffle_buffer=100)
    assert [r["prompt"] for r in again.take(14)] == drawn  # seeded: the same order every run
    resumed = StreamingPrompts(load_prompt_dataset(c), seed=1, shuffle_buffer=100)
    resumed.seek(10)
    assert [r["prompt"] for r in resumed.take(4)] == drawn[10:]
    plain = StreamingPrompts(load_prompt_dataset(c), seed=1, shuffle_buffer=1)
    assert [r["prompt"] for r in plain.take(8)] == [f"q{i}" for i in range(7)] + ["q0"]  # buffer 1 = file order


def test_streaming_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="streaming=True is invalid: a stream's length is unknown.*max_steps"):
        cfg(streaming=True)
    with pytest.raises(ConfigError, match="shuffle_buffer=0"):
        cfg(streaming=True, max_steps=1, shuffle_buffer=0)
    empty = tmp_path / "blank.jsonl"
    empty.write_text('{"prompt": " "}\n')
    stream = StreamingPrompts(load_prompt_dataset(cfg(dataset=str(empty), streaming=True, max_steps=1)), 0, 10, str(empty))
    with pytest.raises(ConfigError, match="yielded no non-empty prompts"):
        stream.take(1)
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"prompt": "ok", "x": 1}\n{"prompt": 3, "x": 2}\n')
    with pytest.raises(ConfigError, match="a prompt is a int, not text"):
        StreamingPrompts(load_prompt_dataset(cfg(dataset=str(numbers), streaming=True, max_steps=1)), 0, 1).take(2)


def test_a_mixed_prompt_column_names_the_bad_type(tmp_path):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(ConfigError, match="a prompt is a int, not text"):
        load_prompt_dataset(cfg(dataset=str(mixed)))


@pytest.mark.parametrize("name,content", [
    ("h.csv", "prompt,answer\n"),
    ("e.json", "[]"),
    ("b.jsonl", "\n\n"),
    ("e.parquet", None),
])
def test_a_dataset_without_rows_says_so(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        datasets.Dataset.from_dict({"prompt": [], "answer": []}).to_parquet(str(path))
    else:
        path.write_text(content)
    with pytest.raises(ConfigError, match="has no rows"):
        load_prompt_dataset(cfg(dataset=str(path)))


def test_a_dataset_smaller_than_a_batch_trains_with_a_warning(tmp_path, caplog):
    """The README says batches straddle epochs: a 3-prompt set with batch_size 4 draws one prompt twice."""
    from prorl import Trainer

    from .conftest import small_run

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in (1, 2, 3)))
    tr = Trainer(small_run(tmp_path, dataset=str(path), batch_size=4, max_steps=None, n_epochs=1, save_every=0))
    assert tr.total_steps == 1 and tr.stream.rows(0, 4)[3] in tr.stream.rows(0, 3)
    m = tr.train()
    assert m["step"] == 1 and m["groups"] == 4
    assert "the dataset has 3 prompts, fewer than batch_size=4" in caplog.text


def test_evaluating_a_single_training_file_says_it_is_not_held_out(tmp_path, caplog):
    from prorl import Trainer

    from .conftest import small_run

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(8)))
    Trainer(small_run(tmp_path, dataset=str(path), eval_every=2, eval_max_prompts=4))
    assert "is one file with no 'test' split, so the held-out evaluation scores its training prompts" in caplog.text

"""`slm generate [MODEL] PROMPT`, `slm chat [MODEL]` and `slm synth [TEACHER]`: the model first, as in every verb;
-m and -t kept as aliases."""

import json

import pytest
from typer.testing import CliRunner

import slmkit.cli.generate
import slmkit.verbs.synth
from slmkit.cli.main import app, main
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL

GREEDY = ["--temperature", "0", "--max-new-tokens", "6"]


@pytest.fixture
def loaded(monkeypatch, tiny_llama_dir):
    """The specs the commands ask for, in order; every one opens the tiny model (never SmolLM2)."""
    specs = []
    real_load = slmkit.cli.generate.load_model

    def load_tiny(spec, **options):
        specs.append(spec)
        return real_load(str(tiny_llama_dir), **options)

    monkeypatch.setattr(slmkit.cli.generate, "load_model", load_tiny)
    monkeypatch.setattr(slmkit.verbs.synth, "open_runtime",
                        lambda spec, progress, **options: load_tiny(spec, **options))
    return specs


def slm(*args, stdin=None):
    result = CliRunner().invoke(app, [str(arg) for arg in args], input=stdin)
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(*args):
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert isinstance(result.exception, SlmError), result.output
    return str(result.exception)


def test_generate_takes_the_model_first_or_with_m(loaded, tiny_llama_dir):
    first = slm("generate", tiny_llama_dir, "Small models", *GREEDY)
    assert first.strip() and slm("generate", "Small models", "-m", tiny_llama_dir, *GREEDY) == first
    assert slm("generate", "Small models", "--model", tiny_llama_dir, *GREEDY) == first
    assert loaded == [str(tiny_llama_dir)] * 3


def test_generate_with_only_a_prompt_asks_the_default_model(loaded, tiny_llama_dir):
    answer = slm("generate", "Small models", *GREEDY)
    assert loaded == [DEFAULT_MODEL]  # the one argument is the prompt, not a model
    assert answer == slm("generate", tiny_llama_dir, "Small models", *GREEDY)


def test_generate_reads_the_prompt_from_stdin(loaded, tiny_llama_dir):
    given = slm("generate", tiny_llama_dir, "Small models", *GREEDY)
    assert slm("generate", tiny_llama_dir, "-", *GREEDY, stdin="Small models") == given
    assert slm("generate", "-", *GREEDY, stdin="Small models") == given
    assert loaded == [str(tiny_llama_dir), str(tiny_llama_dir), DEFAULT_MODEL]


def test_chat_takes_the_model_first_or_with_m(loaded, tiny_llama_dir):
    conversation = "hello there\n/exit\n"
    first = slm("chat", tiny_llama_dir, *GREEDY, stdin=conversation)
    assert first.strip() and slm("chat", "-m", tiny_llama_dir, *GREEDY, stdin=conversation) == first
    assert slm("chat", *GREEDY, stdin=conversation) == first
    assert loaded == [str(tiny_llama_dir), str(tiny_llama_dir), DEFAULT_MODEL]


def test_synth_takes_the_teacher_first_or_with_t(loaded, tiny_llama_dir, tmp_path):
    (tmp_path / "p.txt").write_text("small models\nwhy test\n")
    lenient = ["--prompts", tmp_path / "p.txt", "--max-new-tokens", "4", "--keep-unfinished", "--min-words", "0",
               "--max-repeat-fraction", "1", "--echo-fraction", "1", "--seed", "0", "--json"]
    written = []
    for index, teacher in enumerate([[tiny_llama_dir], ["-t", tiny_llama_dir], ["--teacher", tiny_llama_dir], []]):
        stats = json.loads(slm("synth", *teacher, "--out", tmp_path / f"{index}.jsonl", *lenient))
        assert stats["generated"] == 2
        written.append([json.loads(line)["messages"] for line in (tmp_path / f"{index}.jsonl").open()])
    assert written[1:] == written[:1] * 3
    assert loaded == [str(tiny_llama_dir)] * 3 + [DEFAULT_MODEL]


def test_a_model_given_twice_or_two_prompts_are_refused_before_loading(loaded):
    for command in (["generate", "./a", "hi", "-m", "./b"], ["chat", "./a", "--model", "./b"]):
        assert refused(*command) == ("the model is given twice (./a and -m ./b): drop -m/--model, "
                                     "the first argument names the model")
    assert refused("synth", "./a", "-t", "./b", "--prompts", "p.txt", "--out", "d.jsonl") == (
        "the teacher is given twice (./a and -t ./b): drop -t/--teacher, the first argument names the teacher")
    assert refused("generate", "./a", "hello", "world") == ("slm generate takes [MODEL] PROMPT, got 3 arguments: "
                                                            "quote a prompt that has spaces")
    assert loaded == []


def test_the_refusal_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["slm", "generate", "./a", "hi", "-m", "./b"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("error: the model is given twice (./a and -m ./b): drop -m/--model, "
                                       "the first argument names the model\n")

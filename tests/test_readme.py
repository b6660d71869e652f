"""The README's Python section runs as written, on a tiny model instead of SmolLM2."""

import re
from pathlib import Path

import pytest
from conftest import SAMPLE_TEXT

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_python_section_runs(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("llama_cpp")
    section = README.read_text().split("## Python\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "smollm2-135m-instruct" in code
    monkeypatch.chdir(tmp_path)
    Path("wiki.txt").write_text(SAMPLE_TEXT * 40)
    exec(compile(code.replace('"smollm2-135m-instruct"', repr(str(tiny_llama_dir))), str(README), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    perplexity, _answer, sparsity, decode_speed = (printed[0], printed[1], printed[-2], printed[-1])
    assert float(perplexity) > 1 and float(sparsity) == pytest.approx(0.5, abs=0.01) and float(decode_speed) > 0
    assert (tmp_path / "out/wanda-gptq/slmkit.json").is_file() and (tmp_path / "out/model.q4_0.gguf").is_file()


def test_the_readme_openai_client_example_runs_against_slm_serve(tiny_llama_dir, capsys):
    import json

    from test_serve import Running

    from slmkit.runtime import open_model
    from slmkit.server import ServeSettings, create_app

    section = README.read_text().split("### Serve it", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    running = Running(create_app(open_model(str(tiny_llama_dir)),
                                 ServeSettings(name="smollm2-135m-instruct", api_key="secret")))
    try:
        exec(compile(code.replace("http://127.0.0.1:8000", running.url), str(README), "exec"), {})
    finally:
        running.stop()
    person = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(person) == {"name", "age"} and len(person["name"]) <= 20 and 0 <= person["age"] <= 120

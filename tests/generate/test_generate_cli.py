"""`genloop generate` prints exactly the generated text; `genloop chat` keeps history; bad flags exit 2."""

from __future__ import annotations

import pytest

from genloop.generate import Engine, SamplingParams
from tests.generate.test_engine import tiny_dir  # noqa: F401 - the fixture
from tests.helpers import assert_one_line_error, run_genloop


def test_generate_prints_exactly_the_completion(tiny_dir) -> None:  # noqa: F811
    engine = Engine(tiny_dir, max_seq_len=128)
    expected = engine.generate("the cat sat", SamplingParams(temperature=0.0, max_tokens=12))[0].text
    engine.close()
    r = run_genloop("generate", tiny_dir, "the cat sat", "--max-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected
    assert r.stderr == ""


@pytest.mark.slow  # compiles the decode step: ~20 s
def test_generate_with_compile_prints_the_eager_completion(tiny_dir) -> None:  # noqa: F811
    engine = Engine(tiny_dir, max_seq_len=128)
    expected = engine.generate("the cat sat", SamplingParams(temperature=0.0, max_tokens=12))[0].text
    engine.close()
    r = run_genloop("generate", tiny_dir, "the cat sat", "--max-tokens", "12", "--compile", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected
    assert r.stderr == ""


def test_compile_without_a_cxx_compiler_exits_2(tiny_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing cached to reuse
    r = run_genloop("generate", tiny_dir, "the cat", "--max-tokens", "4", "--compile", timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert_one_line_error(r.stderr, "C++ compiler", "--compile")


def test_generate_seeded_sampling_repeats(tiny_dir, cli) -> None:  # noqa: F811
    args = ("generate", tiny_dir, "the cat", "--temperature", "1.0", "--seed", "3", "--max-tokens", "15")
    assert cli(*args)[1] == cli(*args)[1]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--max-tokens", "0"], "max_tokens"),
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "1.5"], "top_p"),
        (["--top-k", "-2"], "top_k"),
    ],
)
def test_bad_sampling_flags_exit_2(tiny_dir, cli, flags, needle) -> None:  # noqa: F811
    code, out, err = cli("generate", tiny_dir, "the cat", *flags)
    assert code == 2 and out == ""
    assert_one_line_error(err, needle)


def test_prompt_longer_than_context_exits_2(tiny_dir, cli) -> None:  # noqa: F811
    code, _, err = cli("generate", tiny_dir, "the cat " * 200)
    assert code == 2
    assert_one_line_error(err, "context holds 256")


def test_chat_reads_a_conversation_with_commands(tiny_dir, monkeypatch, capsys) -> None:  # noqa: F811
    import io

    from genloop.cli import chat_cmd, main

    seen: list[list[dict[str, str]]] = []
    real_run = chat_cmd._run

    def recording_run(engine, prompt, params):  # the real generation, with the messages recorded
        seen.append([dict(m) for m in prompt])
        return real_run(engine, prompt, params)

    monkeypatch.setattr(chat_cmd, "_run", recording_run)
    script = "the cat\nthe mat\n/system be brief\nthe bird\n/reset\nhello\n/exit\nignored\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", str(tiny_dir), "--max-tokens", "5"]) == 0
    roles = [[m["role"] for m in messages] for messages in seen]
    assert roles == [["user"], ["user", "assistant", "user"], ["system", "user"], ["system", "user"]]
    assert seen[1][2]["content"] == "the mat" and seen[2][0]["content"] == "be brief"
    assert "system prompt set" in capsys.readouterr().err

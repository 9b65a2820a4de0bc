"""The README's API examples, run in its order against a server seeded as `copybandit init` seeds
one, so a reader who follows them gets the answers they show."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlmodel import Session

from generation.lint import RULES
from generation.pipeline import EMPTY, FRAGMENT, TOO_LONG
from service.cli import main, users
from service.demo import seed_demo
from service.schemas import GenerateIn

README = Path(__file__).resolve().parent.parent / "README.md"
# From creating an experiment to changing a variant: the examples that build on each other.
FIRST, LAST = "### Create an experiment", "### Choose copy for an impression"
CURL = re.compile(
    r"curl -s (?:-X (?P<method>[A-Z]+) )?\"?\$CB(?P<path>\S+).*?(?:-d '(?P<body>.*?)')?$"
)


def _examples() -> list[tuple[str, str, Any, bool]]:
    """(method, path, JSON body or None, whether it sends the ETag read as If-Match) of each curl
    call in those sections, in order."""
    text = README.read_text()
    part = text[text.index(FIRST) : text.index(LAST)]
    calls = []
    for block in re.findall(r"```sh\n(.*?)```", part, re.DOTALL):
        # A command continues over lines ending in a backslash, and its -d body over several.
        joined = re.sub(r"\\\n\s*", " ", block)
        for command in re.split(r"\n(?=curl )", joined):
            if not command.startswith("curl "):
                continue
            without_answers = " ".join(line.split("#")[0] for line in command.splitlines())
            call = CURL.match(without_answers.strip())
            assert call is not None, command
            body = json.loads(call["body"]) if call["body"] else None
            method = call["method"] or ("POST" if body is not None else "GET")
            if_match = '-H "If-Match: $etag"' in command
            calls.append((method, call["path"].strip('"'), body, if_match))
    return calls


def test_the_readme_examples_from_creating_an_experiment_to_pausing_a_variant_work_in_order(
    api: Any, session: Session
) -> None:
    seed_demo(session=session)  # experiment 1 and its variants, as `copybandit init` makes them
    calls = _examples()
    # The brief's, a persona's, the brief's with If-Match and a variant's with If-Match.
    assert [m for m, _, _, _ in calls].count("PATCH") == 4
    assert [if_match for _, _, _, if_match in calls].count(True) == 2

    for method, path, body, if_match in calls:
        if if_match:
            # As `etag=$(curl -s -o /dev/null -D - ...)` reads it.
            etag = api.get(path).headers["ETag"]
            headers = {**api._headers("admin"), "If-Match": etag}
            response = api.client.open(path, method=method, json=body, headers=headers)
            assert response.status_code == 200, response.get_json()
            continue
        send = getattr(api, method.lower())
        response = send(path) if body is None else send(path, json=body)
        # Before, the PATCH paused the new experiment's only tea-lovers variant: 409, "this is the
        # segment's last active variant".
        assert response.status_code < 300, (method, path, response.get_json())
    created = api.get("/v1/experiments/2").get_json()
    (tea,) = [s for s in created["segments"] if s["key"] == "tea-lovers"]
    assert {v["id"]: v["status"] for v in tea["variants"]} == {10: "paused", 11: "active"}
    assert tea["description"] == "Brew loose-leaf tea at 80 °C."
    assert created["product"]["price"] == 45.0
    assert [s["key"] for s in created["segments"]][-1] == "night-owls"
    first = api.get("/v1/experiments?limit=1").get_json()
    assert ([e["id"] for e in first["experiments"]], first["next_after"]) == ([1], 1)
    # The audit row the brief's PATCH wrote is the one the README quotes (its key id made up).
    # Before, it showed the brand voice going from none, which the example had created with one.
    edits = api.get("/v1/experiments/2/audit?action=edit").get_json()["events"]
    (brief_edit,) = [e for e in edits if e["numbers"]["fields"] == ["brand_voice", "product.price"]]
    key_id = api.keys["admin"].split("_")[1]
    quoted = brief_edit["reason"].replace(key_id, "3f9a1c2e5b7d9e01")
    assert f"`{quoted}`" in " ".join(README.read_text().split())


def test_the_readme_names_every_option_of_the_users_commands() -> None:
    usage: dict[str, str] = {}
    for line in README.read_text().splitlines():
        if line.startswith("copybandit users "):
            # The first is the Command line section's; later ones are examples of one use.
            usage.setdefault(line.split()[2], line)
    for name, command in users.commands.items():
        options = [p for p in command.params if isinstance(p, click.Option)]
        # Before, set-password's --password was left out.
        missing = [p.opts[0] for p in options if not any(o in usage[name] for o in p.opts)]
        assert missing == [], f"README's copybandit users {name} leaves out {missing}"


def test_the_simulation_summary_says_what_its_table_shows() -> None:
    text = README.read_text()
    section = text[text.index("## Simulation: does the loop pay?") :]
    policies = ("Thompson sampling", "uniform A/B split", "oracle")
    rows = dict(re.findall(rf"^({'|'.join(policies)}) +(\d+) \[", section, re.MULTILINE))
    thompson, uniform, oracle = (int(rows[p]) for p in policies)
    # It said 1.3%, the share of the expected regret (188.0); 195 of 14207 conversions is 1.4%.
    given_up = oracle - thompson
    summary = (
        f"converts {round(100 * (thompson / uniform - 1))}% more than the uniform A/B split and "
        f"gives up {100 * given_up / oracle:.1f}% of the oracle's conversions ({given_up} of "
        f"{oracle})"
    )
    assert summary in " ".join(section.split())


def _fenced_after(text: str, lead: str) -> list[str]:
    """The lines of the first fenced block after `lead`."""
    start = text.index("```\n", text.index(lead)) + len("```\n")
    return text[start : text.index("```", start)].splitlines()


def test_the_readme_shows_what_init_prints_on_a_first_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", f"sqlite:///{tmp_path}/first.db")
    for name in ("COPYBANDIT_HOST", "COPYBANDIT_PORT"):
        monkeypatch.delenv(name, raising=False)
    printed = CliRunner().invoke(main, ["init", "--no-demo-history"], catch_exceptions=False)
    assert printed.exit_code == 0, printed.output
    shown = "\n".join(_fenced_after(README.read_text(), "On first run it prints"))
    # The README's key and password are made up; the lines around them are init's own.
    made_up = re.split(r"cb_[0-9a-f]{16}_[\w-]+|example-only-xyz", shown)
    assert len(made_up) == 3
    pattern = r"\S+".join(map(re.escape, made_up))
    # Before, it left out the two lines telling how to make another key and more accounts.
    assert re.search(pattern, printed.output), printed.output


def test_the_readme_shows_what_init_prints_on_a_later_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", f"sqlite:///{tmp_path}/again.db")
    for name in ("COPYBANDIT_HOST", "COPYBANDIT_PORT"):
        monkeypatch.delenv(name, raising=False)
    for _ in range(2):
        printed = CliRunner().invoke(main, ["init", "--no-demo-history"], catch_exceptions=False)
        assert printed.exit_code == 0, printed.output
    shown = "\n".join(_fenced_after(README.read_text(), "makes none of them again"))
    # The README's path and key id are made up; the lines around them are init's own.
    made_up = re.split(r"sqlite:///\S+|[0-9a-f]{16}", shown)
    assert len(made_up) == 3
    pattern = r"\S+".join(map(re.escape, made_up))
    assert re.fullmatch(pattern, printed.output.strip()), printed.output


def test_the_readme_gives_the_defaults_and_bounds_of_n_and_of_the_full_loop_rounds() -> None:
    text = " ".join(README.read_text().split())
    (option,) = [p for p in main.commands["generate"].params if p.name == "n"]
    assert isinstance(option.type, click.IntRange)
    bounds = f"{option.type.min} to {option.type.max}"
    assert option.default == GenerateIn.model_fields["n"].default
    # Before, neither the API nor the command line said how many lines a job asks for unless told.
    assert f"`n` is {bounds} (default {option.default})" in text
    assert f"({bounds}, default {option.default}; progress bar)" in text
    (rounds,) = [p for p in main.commands["simulate"].params if p.name == "rounds"]
    assert f"({rounds.default} rounds of 20,000 by default)" in text


def test_the_readme_names_every_reason_a_generated_line_is_rejected_for() -> None:
    # A job's rejections said `fragment: ...` and `empty: ...`, which the README's pipeline did
    # not name, so a reader of GET /v1/jobs/<id> could not look them up.
    text = " ".join(README.read_text().split())
    for reason in (FRAGMENT, TOO_LONG, EMPTY):
        assert f"`{reason}`" in text, reason
    for rule in (*RULES, "near_duplicate"):
        assert f"`{rule}" in text, rule


def test_the_readme_says_where_make_run_puts_the_copybandit_command() -> None:
    # `make run` installs copybandit into the venv alone, and the README's next lines (what init
    # prints: "Lost it? `copybandit keys create --scope admin`") and every command after them
    # said `copybandit ...`: typed as shown, each was "copybandit: command not found".
    makefile = (README.parent / "Makefile").read_text()
    venv = re.search(r"^VENV := (\S+)$", makefile, re.MULTILINE)
    assert venv is not None
    assert "$(BIN)/copybandit init" in makefile and "BIN := $(VENV)/bin" in makefile
    text = README.read_text()
    before_first_command = text[: text.index("`copybandit keys create")]
    assert f"`{venv[1]}/bin/copybandit " in before_first_command
    assert f"`. {venv[1]}/bin/activate`" in before_first_command


def _command_line_entries() -> dict[str, str]:
    """Each command of the README's Command line block (`keys create`, `migrate`, ...), with the
    lines that describe it, joined."""
    text = README.read_text()
    start = text.index("```\n", text.index("## Command line")) + len("```\n")
    entries: dict[str, str] = {}
    name = ""
    for line in text[start : text.index("```", start)].splitlines():
        if line.startswith("copybandit "):
            words = line.split()
            name = " ".join(words[1:3] if words[1] in ("keys", "users") else words[1:2])
        entries[name] = f"{entries.get(name, '')} {line.strip()}"
    return entries


def test_a_command_whose_exit_status_the_readme_gives_says_it_in_its_help() -> None:
    # A deploy script checks `migrate --check` and cron `lifecycle --once` by their exit status;
    # the README gave it, but their --help did not ("Only report whether migrations are pending").
    named = [name for name, entry in _command_line_entries().items() if "exit 1" in entry]
    assert {"migrate", "lifecycle", "check"} <= set(named)
    silent = []
    for name in named:
        shown = CliRunner().invoke(main, [*name.split(), "--help"], catch_exceptions=False)
        assert shown.exit_code == 0, shown.output
        if "exit 1" not in " ".join(shown.output.split()).lower():
            silent.append(name)
    assert silent == []


@pytest.mark.parametrize(
    ("name", "said"),
    [
        # What Ctrl-C does to the job it runs, which the README's Command line says.
        ("generate", "ctrl-c"),
        # Where the access log goes and that an API key in an address is hidden there.
        ("serve", "access-log"),
    ],
)
def test_the_help_says_what_the_readme_says_of_the_command(name: str, said: str) -> None:
    assert said in _command_line_entries()[name].lower()
    shown = CliRunner().invoke(main, [name, "--help"], catch_exceptions=False)
    text = " ".join(shown.output.split()).lower()
    if name == "serve":
        # The option was listed bare: `--access-log / --no-access-log`, no word on what it logs.
        (line,) = [line for line in shown.output.splitlines() if "--access-log" in line]
        assert line.strip() != "--access-log / --no-access-log", shown.output
        assert "hidden" in text and "info" in text, shown.output
    else:
        assert said in text, shown.output

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service import create_app
from service.config import DEV_SECRET, ConfigError, display_url, load_settings


def test_defaults_serve_an_embedded_sqlite_file_on_loopback() -> None:
    settings = load_settings(environ={}).validate()
    assert settings.database_url == f"sqlite:///{Path('var/copybandit.db').resolve()}"
    assert (settings.host, settings.port, settings.env) == ("127.0.0.1", 8000, "development")


def test_environment_variables_override_defaults() -> None:
    settings = load_settings(
        environ={
            "COPYBANDIT_PORT": "9001",
            "COPYBANDIT_SNAPSHOT_TTL_SECONDS": "2.5",
            "COPYBANDIT_DATABASE_URL": "postgresql://db.internal/copy",
        }
    ).validate()
    assert settings.port == 9001
    assert settings.snapshot_ttl_seconds == 2.5
    # PostgreSQL URLs are pinned to psycopg 3, the driver the project installs.
    assert settings.database_url == "postgresql+psycopg://db.internal/copy"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COPYBANDIT_PORT", "eighty", r"COPYBANDIT_PORT must be an int, got 'eighty'"),
        # int() and float() read any script's digits: port 3, 16 workers, a 2.5 s TTL.
        ("COPYBANDIT_PORT", "\u0663", r"^COPYBANDIT_PORT must be an int, got '\u0663'$"),
        ("COPYBANDIT_WORKERS", "\uff11\uff16", r"^COPYBANDIT_WORKERS must be an int, got '"),
        ("COPYBANDIT_PORT", "8_000", r"^COPYBANDIT_PORT must be an int, got '8_000'$"),
        (
            "COPYBANDIT_SNAPSHOT_TTL_SECONDS",
            "1_0.5",
            r"^COPYBANDIT_SNAPSHOT_TTL_SECONDS must be a float, got '1_0.5'$",
        ),
        (
            "COPYBANDIT_SNAPSHOT_TTL_SECONDS",
            "\u0662.\u0665",
            r"^COPYBANDIT_SNAPSHOT_TTL_SECONDS must be a float, got '\u0662.\u0665'$",
        ),
        ("COPYBANDIT_PORT", "70000", r"COPYBANDIT_PORT must be between 1 and 65535"),
        ("COPYBANDIT_ENV", "staging", r"COPYBANDIT_ENV must be one of development, test"),
        ("COPYBANDIT_DATABASE_URL", "mysql://x/y", r"COPYBANDIT_DATABASE_URL must be a sqlite"),
        (
            "COPYBANDIT_SNAPSHOT_TTL_SECONDS",
            "-1",
            r"COPYBANDIT_SNAPSHOT_TTL_SECONDS must be between 0",
        ),
        ("COPYBANDIT_WORKERS", "0", r"COPYBANDIT_WORKERS must be between 1 and 64"),
        (
            "COPYBANDIT_TRUSTED_PROXIES",
            "-1",
            r"COPYBANDIT_TRUSTED_PROXIES must be between 0 and 10",
        ),
        ("COPYBANDIT_LOG_LEVEL", "verbose", r"COPYBANDIT_LOG_LEVEL must be one of DEBUG, INFO"),
        # Each of these passed and then failed with a traceback from the first command.
        ("COPYBANDIT_DATABASE_URL", "sqlite", r"COPYBANDIT_DATABASE_URL must be a sqlite"),
        ("COPYBANDIT_DATABASE_URL", "postgresql", r"COPYBANDIT_DATABASE_URL must be a sqlite"),
        ("COPYBANDIT_DATABASE_URL", "sqlite:foo.db", r"COPYBANDIT_DATABASE_URL must be a sqlite"),
        ("COPYBANDIT_DATABASE_URL", "postgresql+psycopg2://h/d", r"\(driver: psycopg 3\)"),
        ("COPYBANDIT_DATABASE_URL", "postgresql://h:notaport/d", r"got 'postgresql\+psycopg://h"),
        # Each of these passed, then failed every scheduler tick or every use.
        *(
            ("COPYBANDIT_LIFECYCLE_INTERVAL_SECONDS", v, r"INTERVAL_SECONDS must be between 1 and")
            for v in ("inf", "1e308", "1e17", "nan")
        ),
        ("COPYBANDIT_SNAPSHOT_TTL_SECONDS", "inf", r"TTL_SECONDS must be between 0 and 3600"),
        ("COPYBANDIT_RATE_LIMIT_PER_SECOND", "inf", r"PER_SECOND must be between 0 and"),
        ("COPYBANDIT_RATE_LIMIT_BURST", "inf", r"BURST must be between 1 and"),
        # A maximum under the default minimum was blamed on COPYBANDIT_COPY_MIN_CHARS.
        ("COPYBANDIT_COPY_MAX_CHARS", "1001", r"^COPYBANDIT_COPY_MAX_CHARS must be at most 1000"),
        ("COPYBANDIT_COPY_MIN_CHARS", "0", r"^COPYBANDIT_COPY_MIN_CHARS must be >= 1, got 0"),
        (
            "COPYBANDIT_COPY_MAX_CHARS",
            "5",
            r"^COPYBANDIT_COPY_MIN_CHARS and COPYBANDIT_COPY_MAX_CHARS: the minimum \(20\) must be"
            r" below the maximum \(5\)$",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={variable: value}).validate()


def test_a_refused_database_url_is_shown_without_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"COPYBANDIT_DATABASE_URL": "mysql://app:hunter2@db/shop"}).validate()
    assert "hunter2" not in str(refused.value) and "mysql://app:***@db/shop" in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:Sup3r@S3cret:Pw@db.internal:5432/prod",
        # Parsed as host "S3cret@db.internal", which the driver printed failing to resolve it.
        "postgresql://app:Sup3r@S3cret@db.internal:5432/prod",
    ],
)
def test_a_database_url_that_cannot_be_parsed_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"COPYBANDIT_DATABASE_URL": url}).validate()
    # Every command's start-up error printed it whole, password and all.
    assert "S3cret" not in str(refused.value)
    assert "postgresql+psycopg://***@db.internal:5432/prod" in str(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # SQLAlchemy wrote sqlite:///%3Amemory%3A, and %3A for every colon in a path or query.
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite:////srv/copy:2026/copybandit.db", "sqlite:////srv/copy:2026/copybandit.db"),
        (
            "postgresql+psycopg://app:hunter2@db:5433/shop?options=-csearch_path%3Dcb",
            "postgresql+psycopg://app:***@db:5433/shop?options=-csearch_path=cb",
        ),
        # libpq's password parameters were shown in clear.
        (
            "postgresql://app@db/shop?password=hunter2&sslmode=require&sslpassword=hunter3",
            "postgresql://app@db/shop?password=***&sslmode=require&sslpassword=***",
        ),
        # SQLAlchemy cannot parse these (an unescaped @ and : in the password, a port that is not
        # a number), and they were shown whole.
        ("postgresql://app:hun@ter:2@db:5432/shop", "postgresql://***@db:5432/shop"),
        # This one parses, as password "p" and host "ss@db": the rest of the password showed.
        ("postgresql://app:p@ss@db:5432/shop?sslmode=require", "postgresql://***@db:5432/shop?***"),
        (
            "postgresql://app:hunter2@db:port/shop?password=hunter2",
            "postgresql://***@db:port/shop?***",
        ),
    ],
)
def test_database_urls_are_shown_as_written_without_their_password(url: str, shown: str) -> None:
    assert display_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:////tmp/copy.db",
        "postgres://u:p@db.internal:5433/copy",
        "postgresql+psycopg://db.internal/copy",
        "postgresql://u@/copy?host=/var/run/postgresql",
    ],
)
def test_database_urls_of_every_documented_form_are_accepted(url: str) -> None:
    load_settings(environ={"COPYBANDIT_DATABASE_URL": url}).validate()


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Callable[[int, bool], None]:
    """Make torch see `cuda` CUDA GPUs and an MPS device or none, whatever this machine has."""
    import torch

    def see(cuda: int, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return see


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps"])
def test_model_devices_the_machine_has_are_accepted(
    device: str, gpus: Callable[[int, bool], None]
) -> None:
    gpus(2, True)
    assert (
        load_settings(environ={"COPYBANDIT_MODEL_DEVICE": device}).validate_model().model_device
        == device
    )


@pytest.mark.parametrize(
    ("device", "cuda", "mps"), [("cuda", 0, True), ("cuda:2", 2, False), ("mps", 1, False)]
)
def test_model_devices_the_machine_lacks_are_refused(
    device: str, cuda: int, mps: bool, gpus: Callable[[int, bool], None]
) -> None:
    # Each passed, and every generation job then failed on it.
    gpus(cuda, mps)
    with pytest.raises(ConfigError, match="COPYBANDIT_MODEL_DEVICE must be a device this machine"):
        load_settings(environ={"COPYBANDIT_MODEL_DEVICE": device}).validate_model()


def test_a_cuda_device_is_checked_without_initialising_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # serve checks in gunicorn's master: CUDA initialised there cannot be used by the workers
    # it forks, so the GPUs are counted through NVML and the CUDA runtime is never asked.
    import torch

    def initialise_cuda() -> int:
        raise AssertionError("the device check initialised CUDA")

    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", initialise_cuda, raising=False)
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 2)
    settings = load_settings(environ={"COPYBANDIT_MODEL_DEVICE": "cuda:1"}).validate_model()
    assert settings.model_device == "cuda:1"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([], r"COPYBANDIT_MODEL must be a local Hugging Face causal-LM folder with config\.json"),
        # It had failed every job with "install sentencepiece or tiktoken".
        (["config.json", "model.safetensors"], r"COPYBANDIT_MODEL must hold the model's tokenizer"),
        (["config.json", "tokenizer.json"], r"COPYBANDIT_MODEL must hold the model's weights"),
    ],
)
def test_a_model_folder_missing_what_loading_needs_is_refused(
    tmp_path: Path, files: list[str], message: str
) -> None:
    for name in files:
        (tmp_path / name).write_text("{}")
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={"COPYBANDIT_MODEL": str(tmp_path)}).validate_model()
    _model_folder(tmp_path)
    load_settings(environ={"COPYBANDIT_MODEL": str(tmp_path)}).validate_model()


def _model_folder(
    folder: Path,
    config: dict[str, Any] | None = None,
    tokenizer_config: dict[str, Any] | None = None,
) -> Path:
    """The files a model folder's check reads, written by hand (the weights are not read): a
    causal LM with a chat template unless told otherwise."""
    folder.mkdir(exist_ok=True)
    if config is None:
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    if tokenizer_config is None:
        tokenizer_config = {"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (
            {"architectures": ["BertForMaskedLM"], "model_type": "bert"},
            "; its config.json names BertForMaskedLM, got",
        ),
        ({"architectures": ["BertModel"], "model_type": "bert"}, "BertModel"),
        ({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}, "T5For"),
        ({"model_type": "distilbert"}, "the model type 'distilbert'"),
        ({}, "names neither architectures nor a model_type"),
    ],
    ids=["bert-masked-lm", "bert-encoder", "t5", "distilbert-type-only", "nothing"],
)
def test_a_model_folder_that_is_not_a_causal_lm_is_refused(
    tmp_path: Path, config: dict[str, Any], named: str
) -> None:
    # An encoder folder passed, and every job failed in sampling with "'NoneType' object has no
    # attribute 'batch_repeat_interleave'".
    folder = _model_folder(tmp_path / "encoder", config)
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"COPYBANDIT_MODEL": str(folder)}).validate_model()
    message = str(refused.value)
    assert message.startswith("COPYBANDIT_MODEL must be a causal language model"), message
    assert named in message and message.endswith(f"got {str(folder)!r}") and "\n" not in message


@pytest.mark.parametrize(
    "config",
    [
        {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
        {"model_type": "mistral"},  # no architectures: the type decides
        # A legacy or custom causal name outside transformers' mapping: AutoModelForCausalLM picks
        # the class from model_type, and the folder loads; it was refused.
        {"architectures": ["LLaMAForCausalLM"], "model_type": "llama"},
        {"architectures": ["MyCustomLMHeadModel"], "model_type": "gpt2"},
    ],
    ids=["qwen2", "gpt2", "type-only", "legacy-llama-name", "custom-lm-head"],
)
def test_a_causal_lm_folder_passes(tmp_path: Path, config: dict[str, Any]) -> None:
    folder = _model_folder(tmp_path / "lm", config)
    load_settings(environ={"COPYBANDIT_MODEL": str(folder)}).validate_model()


def test_a_model_folder_without_a_chat_template_is_refused(tmp_path: Path) -> None:
    # Every job failed at its first prompt, the tokenizer having no template to build it with.
    folder = _model_folder(tmp_path / "base", tokenizer_config={"eos_token": "</s>"})
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"COPYBANDIT_MODEL": str(folder)}).validate_model()
    message = str(refused.value)
    assert message.startswith("COPYBANDIT_MODEL must hold a chat template"), message
    assert message.endswith(f"got {str(folder)!r}")
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ConfigError, match="must hold a chat template"):
        load_settings(environ={"COPYBANDIT_MODEL": str(folder)}).validate_model()
    # transformers saves it beside the tokenizer config, or names it among several there.
    (folder / "chat_template.jinja").write_text("{{ messages[0].content }}")
    load_settings(environ={"COPYBANDIT_MODEL": str(folder)}).validate_model()
    (folder / "chat_template.jinja").unlink()
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    load_settings(environ={"COPYBANDIT_MODEL": str(folder)}).validate_model()


def test_a_model_folder_whose_config_is_not_json_is_refused(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "broken")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"COPYBANDIT_MODEL must hold a config\.json that reads"):
        load_settings(environ={"COPYBANDIT_MODEL": str(folder)}).validate_model()


def test_a_model_cache_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    # It had failed only at the first job, with FileExistsError.
    (tmp_path / "a-file").write_text("")
    for path in (tmp_path / "a-file", tmp_path / "a-file" / "models"):
        with pytest.raises(ConfigError, match="COPYBANDIT_MODEL_CACHE_DIR must be a folder"):
            load_settings(environ={"COPYBANDIT_MODEL_CACHE_DIR": str(path)}).validate_model()
    not_yet = tmp_path / "not" / "yet"
    load_settings(environ={"COPYBANDIT_MODEL_CACHE_DIR": str(not_yet)}).validate_model()
    assert not not_yet.exists()  # checked, not made


def test_a_model_cache_dir_this_process_cannot_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root may write anywhere, and CI runs as root, so the permission check is answered here as
    # it is for a service account in a folder it does not own.
    real_access = os.access
    unwritable = tmp_path / "not-ours"
    unwritable.mkdir()

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == unwritable and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    for path in (unwritable, unwritable / "models" / "cache"):
        with pytest.raises(ConfigError, match="COPYBANDIT_MODEL_CACHE_DIR must be a folder this"):
            load_settings(environ={"COPYBANDIT_MODEL_CACHE_DIR": str(path)}).validate_model()
    load_settings(environ={"COPYBANDIT_MODEL_CACHE_DIR": str(tmp_path / "ours")}).validate_model()


def test_model_paths_this_process_cannot_read_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A path under a folder this user may not search (/root/.cache/x for a service account) made
    # Python 3.11's is_file and exists raise, and the check ended in PermissionError's traceback.
    # CI runs as root, which may search anything, so the refusal is answered here.
    locked = tmp_path / "locked"
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if Path(path).is_relative_to(locked) and Path(path) != locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    for variable in ("COPYBANDIT_MODEL", "COPYBANDIT_MODEL_CACHE_DIR"):
        with pytest.raises(ConfigError, match=f"{variable} cannot be read: .*Permission denied"):
            load_settings(environ={variable: str(locked / "x")}).validate_model()


@pytest.mark.parametrize("device", ["banana", "cuda:"])
def test_a_model_device_torch_does_not_name_is_refused(device: str) -> None:
    with pytest.raises(ConfigError, match=r"COPYBANDIT_MODEL_DEVICE must be cpu, cuda, cuda:N"):
        load_settings(environ={"COPYBANDIT_MODEL_DEVICE": device}).validate_model()


def test_only_validate_model_checks_the_model_settings(tmp_path: Path) -> None:
    # Every command checked them, so one with no use for the model (keys list, migrate --check)
    # failed where var/models could not be made, and paid for torch's import on a GPU host.
    (tmp_path / "a-file").write_text("")
    settings = load_settings(
        environ={
            "COPYBANDIT_MODEL_DEVICE": "banana",
            "COPYBANDIT_MODEL_CACHE_DIR": str(tmp_path / "a-file" / "models"),
        }
    ).validate()
    with pytest.raises(ConfigError, match="COPYBANDIT_MODEL_DEVICE"):
        settings.validate_model()
    with pytest.raises(ConfigError, match="COPYBANDIT_MODEL "):
        load_settings(environ={"COPYBANDIT_MODEL": str(tmp_path)}).validate().validate_model()


@pytest.mark.parametrize("name", ["MODEL", "MODEL_DEVICE", "MODEL_CACHE_DIR"])
def test_model_settings_holding_bytes_that_are_not_utf8_are_refused_by_validate_model(
    tmp_path: Path, name: str
) -> None:
    # A cache folder named with a Latin-1 byte was made, and the job then failed writing the
    # weights into it (UnicodeEncodeError); the other commands still run, as for any model setting.
    value = str(tmp_path / "mod\udce8les")
    (tmp_path / "mod\udce8les").mkdir()
    settings = load_settings(environ={f"COPYBANDIT_{name}": value}).validate()
    with pytest.raises(ConfigError) as refused:
        settings.validate_model()
    assert str(refused.value) == (
        f"COPYBANDIT_{name} holds bytes that are not UTF-8; check the encoding of the file or shell"
        " that sets it"
    )


def test_log_levels_are_taken_in_either_case() -> None:
    # A lower-case level once reached logging.setLevel unchecked and stopped every worker's boot.
    settings = load_settings(environ={"COPYBANDIT_LOG_LEVEL": "warning"}).validate()
    assert settings.log_level == "WARNING"
    logging.Logger("probe").setLevel(settings.log_level)  # raised ValueError for "warning"


def test_production_refuses_default_secrets() -> None:
    with pytest.raises(ConfigError, match="COPYBANDIT_USER_ID_KEY must be set"):
        load_settings(environ={"COPYBANDIT_ENV": "production"}).validate()
    settings = load_settings(
        environ={
            "COPYBANDIT_ENV": "production",
            "COPYBANDIT_USER_ID_KEY": "x" * 40,
            "COPYBANDIT_SECRET_KEY": "y" * 40,
        }
    ).validate()
    assert settings.user_id_key != DEV_SECRET


def test_production_refuses_one_value_for_both_secrets() -> None:
    strong = "x" * 40
    environ = {
        "COPYBANDIT_ENV": "production",
        "COPYBANDIT_USER_ID_KEY": strong,
        "COPYBANDIT_SECRET_KEY": strong,
    }
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=environ).validate()
    assert str(refused.value) == (
        "COPYBANDIT_SECRET_KEY must differ from COPYBANDIT_USER_ID_KEY in production,"
        " got '<the same value>'"
    )
    assert strong not in str(refused.value)


def test_every_bad_setting_is_named_in_one_refusal() -> None:
    # Each was refused alone: the operator fixed USER_ID_KEY, restarted, and only then heard of
    # SECRET_KEY (and of a port, a number that does not parse, behind them).
    environ = {
        "COPYBANDIT_ENV": "production",
        "COPYBANDIT_SECRET_KEY": "short",
        "COPYBANDIT_PORT": "0",
        "COPYBANDIT_WORKERS": "many",
    }
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=environ).validate()
    assert str(refused.value).splitlines() == [
        "COPYBANDIT_WORKERS must be an int, got 'many'",
        "COPYBANDIT_PORT must be between 1 and 65535, got 0",
        "COPYBANDIT_USER_ID_KEY must be set to a random value of at least 32 characters in"
        " production, got '<default>'",
        "COPYBANDIT_SECRET_KEY must be set to a random value of at least 32 characters in"
        " production, got '<too short>'",
    ]


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'databse_url'"):
        load_settings({"databse_url": "sqlite:///x.db"}, environ={})


def test_create_app_validates_at_start_up() -> None:
    with pytest.raises(ConfigError, match="COPYBANDIT_PORT"):
        create_app({"port": 0})

import os
import re
from pathlib import Path

import pytest

from daas import config


def test_defaults_and_derived_names():
    settings = config.load({})
    assert (settings.web_port, settings.flower_port, settings.provider) == (3000, 5555, "local")
    assert settings.input_bucket == "daas-input" and settings.queue == "daas-classify"
    assert settings.dead_letter_queue == "daas-classify-dlq"
    assert settings.aws_endpoint == ""  # real AWS unless told otherwise


def test_environment_overrides_and_round_trip():
    settings = config.load({"DAAS_WEB_PORT": "8080", "DAAS_STACK": "prod", "AWS_DEFAULT_REGION": "eu-west-1",
                            "DAAS_EVENTS": "off", "DAAS_IDLE_TIMEOUT": "2.5", "DAAS_PROVIDER": "ec2"})
    assert settings.web_port == 8080 and settings.output_bucket == "prod-output"
    assert settings.region == "eu-west-1" and settings.events is False and settings.idle_timeout == 2.5
    assert settings.scale_max == 20
    assert config.load(config.to_env(settings)) == settings


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="DAAS_WEB_PORT"):
        config.load({"DAAS_WEB_PORT": "eighty"})


def test_readme_documents_every_variable():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    documented = set(re.findall(r"`((?:DAAS|AWS)_[A-Z0-9_]+)`", readme))
    missing = set(config.ENV_VARS.values()) - documented
    assert not missing, f"README.md's configuration table lacks {sorted(missing)}"


def test_the_defaults_and_every_test_profile_pass_the_checks():
    config.load({}).check()
    config.load({"DAAS_PROVIDER": "ec2"}).check()
    from daas.bench import soak
    config.load(soak.profile(4)).check()
    config.load(soak.profile(30)).check()


@pytest.mark.parametrize("env, says", [
    ({"DAAS_STALL_TIMEOUT": "15"}, "DAAS_STALL_TIMEOUT=15 is shorter than 2 long polls"),
    ({"DAAS_EC2_CAPACITY": "spot-only"}, "DAAS_EC2_CAPACITY='spot-only' is none of spot-first, spot, on-demand"),
    ({"DAAS_RUNTIME": "tensorrt", "DAAS_DEVICE": "tpu"},
     "DAAS_DEVICE='tpu' is none of auto, cpu, cuda; DAAS_RUNTIME='tensorrt' is none of auto, openvino"),
    ({"DAAS_VISIBILITY_TIMEOUT": "0"}, "DAAS_VISIBILITY_TIMEOUT=0: SQS takes 1 to 43200"),
    ({"DAAS_TASK_TIME_LIMIT": "43190"}, "SQS refuses to keep a message invisible for more than 43200 s"),
    ({"DAAS_MAX_RECEIVES": "1001"}, "DAAS_MAX_RECEIVES=1001"),
    ({"DAAS_HEARTBEAT_INTERVAL": "0", "DAAS_SCALE_INTERVAL": "-1"},
     "DAAS_HEARTBEAT_INTERVAL=0, DAAS_SCALE_INTERVAL=-1: must be more than 0 seconds"),
    ({"DAAS_WEB_TIMEOUT": "0", "DAAS_SCALE_DRAIN_TARGET": "-5"},
     "DAAS_WEB_TIMEOUT=0, DAAS_SCALE_DRAIN_TARGET=-5: must be more than 0 seconds"),
    ({"DAAS_IMAGES_PER_TASK": "0"}, "DAAS_IMAGES_PER_TASK=0: must be 1 or more"),
    ({"DAAS_SCALE_WORKER_RATE": "0"}, "DAAS_SCALE_WORKER_RATE=0: must be more than 0 images a second"),
    ({"DAAS_IDLE_TIMEOUT": "-1"}, "DAAS_IDLE_TIMEOUT=-1: must be 0 or more"),
    ({"DAAS_SCALE_MIN": "5", "DAAS_SCALE_MAX": "2"}, "DAAS_SCALE_MIN=5 is more than DAAS_SCALE_MAX=2"),
    ({"DAAS_EVENTS": "ture"}, "DAAS_EVENTS='ture' is neither of 1/true/yes/on nor of 0/false/no/off"),
])
def test_settings_that_cannot_work_together_are_refused_with_the_variables_named(env, says):
    """AWS refuses what the local endpoint takes (a visibility past 12 h in all, a redrive count over
    1,000), a stall timeout inside two long polls would restart every idle worker, and a misspelt
    capacity was found only at the first launch (a runtime, at every worker's boot), a misspelt
    switch read as off: each is refused when the settings are read, at a process's start, with what
    would work."""
    with pytest.raises(config.ConfigError) as refused:
        config.load(env)
    assert says in str(refused.value)


def test_the_command_line_says_what_is_wrong_with_a_setting_without_a_traceback():
    import subprocess
    import sys

    env = {**os.environ, "DAAS_STALL_TIMEOUT": "5"}
    run = subprocess.run([sys.executable, "-m", "daas", "export"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("daas: DAAS_STALL_TIMEOUT=5 is shorter than") and "Traceback" not in run.stderr

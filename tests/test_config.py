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

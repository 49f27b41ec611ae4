"""A deployed stack's secrets: SecureString parameters in SSM Parameter Store (made by `daas deploy`),
read once when a process starts, so that no key or password sits in user data, an env file or a log."""
from __future__ import annotations

from daas import aws
from daas.config import Settings

# setting filled in <- setting naming its parameter
SECRET_PARAMETERS = {"api_keys": "api_keys_parameter", "flower_password": "flower_password_parameter"}


def with_secrets(settings: Settings) -> Settings:
    """`settings` with each secret whose parameter is named read from Parameter Store."""
    named = {secret: getattr(settings, parameter) for secret, parameter in SECRET_PARAMETERS.items()
             if getattr(settings, parameter)}
    if not named:
        return settings
    ssm = aws.client("ssm", settings)
    return settings.with_(**{secret: ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
                             for secret, name in named.items()})

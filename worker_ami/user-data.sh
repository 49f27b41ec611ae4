#!/bin/bash
# cloud-init user data for a daas worker instance, rendered by daas.providers.render_user_data
# (a string.Template: the settings block and the lifetime are its only placeholders; a
# literal dollar sign must be written doubled).
# The AMI already holds the code, its virtualenv and the model weights (see worker_ami/README.md);
# this only tells the worker which stack it serves and starts it.
set -euo pipefail
# The instance's own dead man's switch: whatever happens to the worker or the controller, the
# instance powers off (and, launched with InstanceInitiatedShutdownBehavior=terminate, ends) this
# many minutes after boot. 0: DAAS_MAX_LIFETIME is 0, no limit. First, so that no failure below
# (set -e) can skip it.
if [ ${POWEROFF_AFTER_MINUTES} -gt 0 ]; then
  shutdown -P +${POWEROFF_AFTER_MINUTES}
fi
install -d -m 0755 /etc/daas
# Quoted delimiter: the settings are written verbatim, never expanded by this shell.
cat > /etc/daas/worker.env <<'ENV'
${WORKER_ENV_FILE}
DAAS_POWEROFF_COMMAND=sudo -n /usr/bin/systemctl poweroff
ENV
# The worker names itself after its instance (daas-worker-<pid>@<instance id>), so that the
# controller can tell which instance sent a heartbeat, and end the ones that never do.
token=$$(curl -sS --retry 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" http://169.254.169.254/latest/api/token)
instance=$$(curl -sS --retry 5 -H "X-aws-ec2-metadata-token: $$token" http://169.254.169.254/latest/meta-data/instance-id)
echo "DAAS_WORKER_HOST=$$instance" >> /etc/daas/worker.env
chmod 0644 /etc/daas/worker.env
# After an idle exit the worker powers the instance off; it was launched with
# InstanceInitiatedShutdownBehavior=terminate, so EC2 then terminates it.
systemctl enable --now daas-worker.service

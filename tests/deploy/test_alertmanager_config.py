"""deploy/alertmanager/alertmanager.yml, checked offline by amtool (Debian's prometheus-alertmanager package).

Debian's amtool is 0.25, which predates the webhook's `url_file` (0.26): it checks the configuration rendered as the
end-to-end test runs it, with the URL inline; everything else is the file as deployed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy.alertmanager_server import ALERTMANAGER_CONFIG, HOW, render_config
from tests.deploy.catalogue import alert_rules
from tests.deploy.tools import require_tool, run


def rendered(tmp_path: Path) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(render_config("https://hooks.example.com/services/test")))
    return path


def test_the_configuration_is_valid(tmp_path: Path) -> None:
    result = run([require_tool("amtool", HOW), "check-config", str(rendered(tmp_path))])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_refuses_a_broken_configuration(tmp_path: Path) -> None:
    """The check above can fail: a route to a receiver that does not exist is refused."""
    path = rendered(tmp_path)
    path.write_text(path.read_text().replace("receiver: operators", "receiver: nobody", 1))
    result = run([require_tool("amtool", HOW), "check-config", str(path)])
    assert result.returncode != 0
    assert "nobody" in result.stdout + result.stderr


def test_every_alert_reaches_the_webhook_receiver(tmp_path: Path) -> None:
    config = rendered(tmp_path)
    for rule in alert_rules():
        labels = [f"alertname={rule['alert']}", f"severity={rule['labels']['severity']}", "job=haloweave-inference"]
        argv = [require_tool("amtool", HOW), "config", "routes", "test", f"--config.file={config}", *labels]
        result = run(argv)
        assert result.returncode == 0 and result.stdout.strip() == "operators", (rule["alert"], result.stdout)


def test_the_webhook_sends_resolutions_and_reads_its_url_from_a_secret_file() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    hooks = [hook for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])]
    assert hooks, "no webhook receiver"
    for hook in hooks:
        assert "url" not in hook, "the webhook URL is a secret: read it from a file (url_file)"
        assert hook["url_file"].startswith("/run/secrets/")
        assert hook["send_resolved"] is True


def test_inhibit_rules_name_existing_alerts() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            name = matcher.removeprefix('alertname="').removesuffix('"')
            assert name in names, matcher

"""AWX: the execution environment builds a context with ansible-builder, the job templates fit the playbooks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.latscope.latscope.plugins.module_utils.flowspec import KEYS, parse_flow_spec

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TOOLS_BIN = VENV_BIN.parent / "ansible-lint" / "bin"  # scripts/bootstrap.sh: ansible-lint and ansible-builder
SURVEY_FIELDS = {"src", "dst", "dport", "proto", "duration", "traffic"}
# The options of the awx.awx.job_template module (awx_collection/plugins/modules/job_template.py).
JOB_TEMPLATE_OPTIONS = {
    "name", "new_name", "copy_from", "description", "organization", "job_type", "inventory", "project",
    "playbook", "credential", "credentials", "execution_environment", "forks", "limit", "verbosity",
    "extra_vars", "job_tags", "force_handlers", "skip_tags", "start_at_task", "timeout", "use_fact_cache",
    "host_config_key", "scm_branch", "ask_scm_branch_on_launch", "ask_diff_mode_on_launch",
    "ask_variables_on_launch", "ask_limit_on_launch", "ask_tags_on_launch", "ask_skip_tags_on_launch",
    "ask_job_type_on_launch", "ask_verbosity_on_launch", "ask_inventory_on_launch", "ask_credential_on_launch",
    "ask_execution_environment_on_launch", "ask_forks_on_launch", "ask_instance_groups_on_launch",
    "ask_job_slice_count_on_launch", "ask_labels_on_launch", "ask_timeout_on_launch", "survey_enabled",
    "survey_spec", "become_enabled", "diff_mode", "allow_simultaneous", "custom_virtualenv", "job_slice_count",
    "webhook_service", "webhook_credential", "prevent_instance_group_fallback", "labels", "instance_groups",
    "notification_templates_started", "notification_templates_success", "notification_templates_error",
    "state"}
QUESTION_KEYS = {"question_name", "question_description", "variable", "type", "required", "default", "min",
                 "max", "choices"}
QUESTION_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


class _Loader(yaml.SafeLoader):
    """YAML as Ansible reads it: !unsafe marks a string that is never templated."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


@pytest.fixture(scope="module")
def controller() -> dict:
    return yaml.load((REPO / "awx" / "controller.yml").read_text(), Loader=_Loader)  # noqa: S506 (safe loader)


def _templates(controller) -> dict:
    return {t["name"]: t for t in controller["controller_templates"]}


def test_job_templates_run_the_playbooks_with_known_options(controller):
    templates = _templates(controller)
    assert {t["playbook"] for t in templates.values()} == {"playbooks/deploy.yml", "playbooks/measure.yml",
                                                           "playbooks/teardown.yml"}
    names = {kind: {item["name"] for item in controller[f"controller_{kind}"]}
             for kind in ("execution_environments", "projects", "inventories")}
    for name, template in templates.items():
        assert set(template) <= JOB_TEMPLATE_OPTIONS, (name, set(template) - JOB_TEMPLATE_OPTIONS)
        assert (REPO / template["playbook"]).is_file(), name
        assert template["execution_environment"] in names["execution_environments"], name
        assert template["project"] in names["projects"] and template["inventory"] in names["inventories"], name
    source = controller["controller_inventory_sources"][0]
    assert (REPO / source["source_path"]).is_dir()
    text = (REPO / "awx" / "controller.yml").read_text()
    assert not re.search(r"(password|secret|token)\s*:", text, re.I)  # credentials are referenced by name only


def test_measure_survey_is_the_flow_spec(controller):
    template = _templates(controller)["LatScope measure"]
    assert template["survey_enabled"] is True
    questions = template["survey_spec"]["spec"]
    variables = [q["variable"] for q in questions]
    assert set(variables) == SURVEY_FIELDS and len(variables) == len(set(variables))
    assert set(variables) <= set(KEYS)
    for question in questions:
        assert set(question) <= QUESTION_KEYS and question["type"] in QUESTION_TYPES, question
        assert question["question_name"] and isinstance(question["required"], bool), question
    # Answer the survey (defaults, plus two hosts) and render the template's flow as the job would:
    # the playbook's own parser must accept it, and every field must come through.
    answers = {q["variable"]: q.get("default") for q in questions}
    answers.update(src="host1", dst="host2-c1", traffic="iperf3")
    for question in questions:
        if question["type"] == "multiplechoice":
            assert answers[question["variable"]] in question["choices"], question
    flow = re.sub(r"\{\{ (\w+) \}\}", lambda m: str(answers[m.group(1)]), template["extra_vars"]["flow"])
    hosts = {"host1": {"ansible_host": "192.0.2.1"},
             "host2-c1": {"ansible_host": "192.0.2.21", "latscope_container_host": "host2"}}
    parsed = parse_flow_spec(flow, hosts)
    assert parsed["flow"] == {"proto": "tcp", "src": "192.0.2.1", "dst": "192.0.2.21", "dport": 5201}
    assert parsed["duration_s"] == 10.0 and parsed["traffic"] == "iperf3"
    assert parsed["observers"] == ["host1", "host2"]


def test_ansible_builder_creates_the_build_context(tmp_path):
    """ansible-builder accepts execution-environment.yml: the context holds our pins and the collection."""
    work = tmp_path / "ee"
    (work / "requirements").mkdir(parents=True)
    shutil.copy2(REPO / "execution-environment.yml", work)
    shutil.copy2(REPO / "requirements" / "collector.txt", work / "requirements")
    built = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                            str(work / "build"), str(REPO)], capture_output=True, text=True, timeout=300,
                           check=False)
    assert built.returncode == 0, built.stderr
    proc = subprocess.run([str(TOOLS_BIN / "ansible-builder"), "create", "-f", "execution-environment.yml",
                           "-c", "context", "--output-filename", "Containerfile"], cwd=work,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    context = work / "context"
    containerfile = (context / "Containerfile").read_text()
    core_pin = re.search(r"^ansible-core==\S+", (REPO / "requirements" / "dev.txt").read_text(), re.M).group(0)
    assert f'ARG ANSIBLE_INSTALL_REFS="{core_pin} ansible-runner==' in containerfile  # the tested core
    assert "ansible-galaxy collection install --offline" in containerfile
    requirements = (context / "_build" / "requirements.txt").read_text()
    assert "redis==" in requirements and "PyMySQL==" in requirements
    assert "openssh-clients" in (context / "_build" / "bindep.txt").read_text()
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    tarballs = [p.name for p in (context / "_build" / "collections").iterdir()]
    assert tarballs == [f"latscope-latscope-{version}.tar.gz"]

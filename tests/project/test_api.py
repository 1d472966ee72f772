"""The public surface: what `sockchat` exports, and the documented examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

import sockchat

from processes import Server

ROOT = Path(__file__).resolve().parents[2]


def test_public_names_are_exactly_these():
    assert sorted(sockchat.__all__) == sorted(
        [
            "DEFAULT_MAX_LINE",
            "QUIT",
            "Admission",
            "AnswerFailed",
            "ChatServerFactory",
            "ChatService",
            "ConsoleResponder",
            "Conversation",
            "ConversationEnded",
            "ConversationInfo",
            "EchoResponder",
            "FunctionResponder",
            "IConversation",
            "ILifecycle",
            "IResponder",
            "ITranscript",
            "LineFraming",
            "LineRefused",
            "NoGreeting",
            "NotYourTurn",
            "Notice",
            "NoticeKind",
            "PairResponder",
            "RawFraming",
            "Reason",
            "Signed",
            "SockchatError",
            "TranscriptEntry",
            "TranscriptFile",
            "Unavailable",
            "WelcomeLater",
            "__version__",
            "as_responder",
            "chat_site",
            "connect",
            "safe_text",
        ]
    )
    for name in sockchat.__all__:
        assert hasattr(sockchat, name), name


def test_shipped_responders_provide_the_contract():
    assert verifyObject(sockchat.IResponder, sockchat.EchoResponder())
    for responder in [sockchat.ConsoleResponder(print), sockchat.PairResponder()]:
        assert verifyObject(sockchat.IResponder, responder)
        assert verifyObject(sockchat.ILifecycle, responder)


def test_what_a_responders_hooks_get_and_the_fake_provide_iconversation():
    from sockchat.testing import MemoryServer, RecordingConversation

    assert verifyObject(sockchat.IConversation, RecordingConversation())
    server = MemoryServer(sockchat.EchoResponder())
    server.connect()
    (conversation,) = server.factory.conversations.values()
    assert verifyObject(sockchat.IConversation, conversation)


def test_testing_module_names():
    import sockchat.testing

    assert sorted(sockchat.testing.__all__) == [
        "MemoryServer",
        "NoResultYet",
        "RecordingConversation",
    ]


def test_plugin_module_does_not_import_the_reactor():
    code = (
        "import sys, runpy;"
        "runpy.run_path('twisted/plugins/sockchat_plugin.py');"
        "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported';"
        "assert 'sockchat.tap' not in sys.modules, 'tap imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_readme_client_example_is_the_tested_file():
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "say_hello.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert example in blocks


@pytest.mark.slow
def test_readme_client_example_runs():
    with Server("--responder", "echo") as server:
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "say_hello.py"),
                f"tcp:127.0.0.1:{server.port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello -> hello\n你好 -> 你好\n"


def test_readme_testing_example_runs(monkeypatch):
    readme = (ROOT / "README.md").read_text()
    (block,) = [
        b
        for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
        if "MemoryServer" in b
    ]
    monkeypatch.syspath_prepend(str(ROOT))
    exec(compile(block, "README.md", "exec"), {})  # its asserts are the test


def test_readme_service_example_builds_an_application():
    from twisted.application.service import IService

    readme = (ROOT / "README.md").read_text()
    (block,) = [
        b
        for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
        if "ChatService(" in b
    ]
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    (chat,) = list(IService(namespace["application"]))
    assert isinstance(chat, sockchat.ChatService)
    assert chat.port is None, "it listens only when the application starts"

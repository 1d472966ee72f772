"""Talk to a sockchat server from your own Twisted program.

python examples/say_hello.py [ENDPOINT]    (default tcp:127.0.0.1:9527)
"""

import sys

from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError
from twisted.internet.task import react

from sockchat import LineRefused, connect


async def main(reactor, endpoint="tcp:127.0.0.1:9527"):
    try:
        conversation = await connect(reactor, clientFromString(reactor, endpoint))
    except ConnectError as e:
        raise SystemExit(f"cannot connect to {endpoint}: {e}") from None
    for line in ["hello", "你好"]:
        try:
            answer = await conversation.say(line)
        except LineRefused as refused:  # e.g. too long: say something else
            print(f"refused: {refused.notice.text}")
            continue
        print(f"{line} -> {answer}")
    await conversation.quit()


if __name__ == "__main__":
    react(main, sys.argv[1:])

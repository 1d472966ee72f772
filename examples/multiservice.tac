"""sockchat beside another service in one Twisted application.

    twistd -n -y examples/multiservice.tac

The chat listens on 127.0.0.1:9527 (echo answers) and a small web page on
127.0.0.1:8081/status says how many conversations are open, as JSON.  Set
SOCKCHAT_PORT and STATUS_PORT to use other ports.  At stop (Ctrl-C,
SIGTERM), ChatService tells every client `!bye shutdown` before the
process goes.
"""

import json
import os

from twisted.application import service, strports
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web import resource, server

from sockchat import ChatServerFactory, ChatService, EchoResponder

chat = ChatServerFactory(EchoResponder())


class Status(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"conversations": len(chat.conversations)}).encode()


root = resource.Resource()
root.putChild(b"status", Status())

application = service.Application("sockchat with a status page")
services = service.MultiService()
services.setServiceParent(application)
chat_where = f"tcp:{os.environ.get('SOCKCHAT_PORT', '9527')}:interface=127.0.0.1"
ChatService(
    serverFromString(reactor, chat_where), chat, description=chat_where
).setServiceParent(services)
status_port = os.environ.get("STATUS_PORT", "8081")
strports.service(
    f"tcp:{status_port}:interface=127.0.0.1", server.Site(root)
).setServiceParent(services)

from twisted.application.service import ServiceMaker

bootstrap = ServiceMaker("peernet bootstrap", "peernet.bootstrap.tap", "peernet discovery server: knows only broadcasting peers.", "bootstrap")
peer = ServiceMaker("peernet peer", "peernet.peer.tap", "peernet node: gossip, search; silent unless --broadcast.", "peer")

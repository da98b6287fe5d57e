from twisted.application.service import ServiceMaker

bootstrap = ServiceMaker("peernet bootstrap", "peernet.bootstrap.tap", "peernet discovery server: knows only broadcasting peers.", "bootstrap")

"""The HTTP transport: the coordinator service (FastAPI, ``app``) and the participant's
client (httpx, ``client``); ``wire`` is the JSON form of the port's messages."""

"""The live browser viewer (viser): the server, its Origin guard, its camera helpers."""

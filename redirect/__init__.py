"""Everything that touches the kernel for the datapath: bcc loading (loader), tc attach
(tc), the tproxy routing (routing), typed map access (maps, structs, bpfsys), the event
ring (events), skb marks (marks), original destinations (origdst) and netns entry (netns).

Importing any module here must not import bcc (only `Datapath.load()` does), so the CLI
and the unit tests run without it. Imports only policy/ types and errors from the project.
"""

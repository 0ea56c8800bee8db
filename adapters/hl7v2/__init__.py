"""Hospital adapter: HL7 v2 ADT over MLLP and files."""

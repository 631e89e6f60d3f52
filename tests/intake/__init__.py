"""Tests of d365ct.intake: message parsing, the durable inbox, HTTP push, SQS and Service Bus."""

"""Runnables named by import path in CLI tests (as a user's module would hold them)."""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from runnable_k8s.models import DemoChatModel
from tests.support.models import SlowModel

prompt = ChatPromptTemplate.from_messages(
    [("system", "You are a Pokemon expert."), ("human", "{input}")]
)
chain = prompt | DemoChatModel() | StrOutputParser()
slow = SlowModel(delay=60.0)

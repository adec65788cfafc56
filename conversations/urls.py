from django.urls import path

from conversations import views

urlpatterns = [
    path("", views.chat, name="chat"),
    path("c/<uuid:public_id>/", views.chat, name="conversation"),
]

from django.urls import path

from shop import views

urlpatterns = [
    path("product/<int:pk>/", views.product),
    path("checks/", views.checks),
    path("async/product/<int:pk>/", views.product_async),
]

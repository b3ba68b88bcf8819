from datetime import UTC
from typing import Any

from django.db import models
from rest_framework import serializers

from shop.models import SKU, OrderGoods, OrderInfo


class UTCDateTimeField(serializers.DateTimeField):
    """The API's one rule for times: ISO 8601 in UTC with `Z` (pages use the shop's zone)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("default_timezone", UTC)
        super().__init__(**kwargs)


class ApiModelSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.DateTimeField: UTCDateTimeField,
    }


class CredentialsSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)


class AuthorizationOutputSerializer(serializers.Serializer):
    token = serializers.CharField()
    expiry = UTCDateTimeField()
    user_id = serializers.IntegerField()
    username = serializers.CharField()


class UserOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class SKUSerializer(ApiModelSerializer):
    class Meta:
        model = SKU
        fields = ["id", "name", "price", "stock"]


class OrderItemInputSerializer(serializers.Serializer):
    sku_id = serializers.IntegerField(min_value=1)
    count = serializers.IntegerField(min_value=1, max_value=1000)


class OrderInputSerializer(serializers.Serializer):
    items = serializers.ListField(
        child=OrderItemInputSerializer(), allow_empty=False, max_length=100
    )


class OrderGoodsSerializer(ApiModelSerializer):
    name = serializers.CharField(source="sku.name")

    class Meta:
        model = OrderGoods
        fields = ["sku_id", "name", "count", "price"]


class OrderSerializer(ApiModelSerializer):
    status = serializers.CharField(source="status_name")

    class Meta:
        model = OrderInfo
        fields = ["order_id", "total_amount", "status", "created_at"]


class OrderDetailSerializer(OrderSerializer):
    goods = OrderGoodsSerializer(many=True)

    class Meta(OrderSerializer.Meta):
        fields = [*OrderSerializer.Meta.fields, "goods"]
